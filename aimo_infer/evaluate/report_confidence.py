"""The dry-run report's confidence section: accuracy per selection rule on the run's own
streams, and how confident right and wrong streams were (runs recorded with logprobs only).

Each rule re-chooses among the streams that voted in the run (same stops, same arrivals), so
the table isolates selection; ``aimo-infer simulate --select`` also replays the stops.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from aimo_infer.config import SELECT_RULES
from aimo_infer.evaluate.runs import ProblemRecord
from aimo_infer.solve.confidence import ConfidenceSummary
from aimo_infer.solve.vote import Ballot, SelectSettings, select


def confidence_section(
    records: Sequence[ProblemRecord], solve: dict[str, Any]
) -> dict[str, Any] | None:
    """Accuracy per selection rule and per-stream confidence by correctness; None when no
    stream recorded its confidence."""
    if not any(s.confidence for r in records for s in r.streams):
        return None
    recorded = solve.get("confidence", {})
    floor = float(recorded.get("entropy_floor", 0.01))
    eta = float(recorded.get("deepconf_eta", 90.0))
    rules = []
    for rule in SELECT_RULES:
        settings = SelectSettings(rule, floor, eta)
        right = graded = 0
        for r in records:
            if r.reference is None:
                continue
            graded += 1
            right += _is_right(r, select(_ballots(r), settings).answer)
        rules.append({"rule": rule, "right": right, "graded": graded,
                      "accuracy": right / graded if graded else None})
    streams = {}
    for outcome, label in ((True, "right"), (False, "wrong")):
        summaries = [ConfidenceSummary.from_record(s.confidence) for r in records
                     for s in r.streams if s.confidence and s.correct is outcome and s.answer
                     is not None]  # fmt: skip
        streams[label] = {
            "streams": len(summaries),
            "lowest_group": _median([c.lowest_group for c in summaries]),
            "mean_entropy": _median([c.mean_entropy for c in summaries]),
            "tail_entropy": _median([c.tail_entropy for c in summaries]),
        }
    return {"selected_by": solve.get("select", "majority"), "rules": rules, "streams": streams}


def render_confidence(section: dict[str, Any] | None) -> list[str]:
    """The report.md lines of the section (none without recorded confidence)."""
    if section is None:
        return []
    lines = ["", "## Confidence", "",
             f"Selection in the run: `{section['selected_by']}`. Each rule re-chooses among the "
             "streams that voted (same stops and arrivals):", "",
             "| selection rule | right | accuracy |", "|---|---:|---:|"]  # fmt: skip
    for row in section["rules"]:
        accuracy = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.1f}%"
        lines.append(f"| {row['rule']} | {row['right']}/{row['graded']} | {accuracy} |")
    lines += ["", "| streams with an answer | count | lowest group conf. | mean entropy | "
              "tail entropy |", "|---|---:|---:|---:|---:|"]  # fmt: skip
    for label, row in section["streams"].items():
        lines.append(f"| {label} | {row['streams']} | {_num(row['lowest_group'])} | "
                     f"{_num(row['mean_entropy'])} | {_num(row['tail_entropy'])} |")
    lines.append("")
    lines.append("(medians; higher group confidence and lower entropy mean a surer stream)")
    return lines


def _ballots(record: ProblemRecord) -> list[Ballot]:
    voting = sorted((s for s in record.streams if s.votes), key=lambda s: (s.finish_s, s.index))
    return [Ballot(s.answer, ConfidenceSummary.from_record(s.confidence) if s.confidence
                   else None) for s in voting]  # fmt: skip


def _is_right(record: ProblemRecord, answer: object) -> bool:
    if answer is None:
        return False
    return any(s.answer == answer and s.correct for s in record.streams)


def _median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
