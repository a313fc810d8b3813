"""A dry-run directory: its files, and the one-line-per-problem record the report and the
simulator read.

Times in a record are seconds from the problem's start (just before the controller's
``solve``), so a record can be re-scored without the clock it was measured on.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.solve.vote import Answer

TRACES = "traces.jsonl"
RESULTS = "results.jsonl"
CONFIG = "config.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"

# Stream ends whose answer votes (as in the controller); "cancelled" and "low_confidence"
# streams do not vote.
VOTING_ENDS = frozenset({"stop", "length", "code_limit", "deadline", "error"})


@dataclass
class StreamRecord:
    """What one stream did, graded."""

    index: int
    seed: int
    end: str | None
    answer: Answer | None
    correct: bool | None  # None: no reference answer
    tokens: int
    code_calls: int
    code_s: float  # time spent running its code cells
    start_s: float
    finish_s: float
    error: str | None = None
    confidence: dict[str, Any] | None = None  # ConfidenceSummary record (logprobs on)
    end_detail: str | None = None  # why it ended, where ``end`` alone does not say

    @property
    def votes(self) -> bool:
        return self.end in VOTING_ENDS


@dataclass
class ProblemRecord:
    """One finished problem of a dry run: the answer, the vote, the time and every stream."""

    problem_id: str
    source: str
    order: int  # 0-based position in serving order
    reference: str | None
    answer: Answer | None  # the vote's answer
    submitted: Answer | None  # what the submission returns (aimo profiles: an int, fallback
    # when no answer); this is what is graded
    correct: bool | None
    grade_method: str
    votes: list[tuple[Answer, int]]
    num_missing: int
    stop_reason: str
    elapsed_s: float  # the controller's solve time
    used_s: float  # what the time budget was charged
    decision_s: float  # when the controller stopped waiting (last vote in, or the deadline)
    base_s: float
    extra_s: float
    allotted_s: float  # the budget's allotment for the problem
    deadline_s: float  # the controller's deadline, from the problem's start (allotment less
    # the submission's wind-down)
    bank_before_s: float
    bank_after_s: float
    total_tokens: int
    streams: list[StreamRecord] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProblemRecord:
        data = dict(data)
        data["streams"] = [StreamRecord(**s) for s in data.get("streams", [])]
        data["votes"] = [(a, int(c)) for a, c in data.get("votes", [])]
        return cls(**data)

    @property
    def stopped_early(self) -> bool:
        """A policy stopped the problem with streams still running."""
        return self.stop_reason not in ("all finished", "deadline")

    def vote_split(self) -> str:
        parts = [f"{a} x{c}" for a, c in self.votes]
        if self.num_missing:
            parts.append(f"none x{self.num_missing}")
        return ", ".join(parts) or "no votes"


def read_results(run_dir: str | Path) -> list[ProblemRecord]:
    """The finished problems of a run, in the order they finished; errors name file and line."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise FileNotFoundError(f"no {RESULTS} in {run_dir} (not a dry-run directory?)")
    lines = path.read_text(encoding="utf-8").split("\n")
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(ProblemRecord.from_dict(json.loads(line)))
        except json.JSONDecodeError as exc:
            if number >= len(lines) - 1:  # a torn last line: the run was killed mid-write
                break
            raise ValueError(f"{path}:{number}: not a JSON record ({exc.msg})") from exc
        except (TypeError, KeyError) as exc:
            raise ValueError(f"{path}:{number}: not a problem record ({exc})") from exc
    return records


def append_result(run_dir: str | Path, record: ProblemRecord) -> None:
    """Add one finished problem, flushed to disk before returning (a crash keeps it)."""
    path = Path(run_dir) / RESULTS
    with path.open("a", encoding="utf-8") as fh:
        fh.write(record.to_json() + "\n")
        fh.flush()


def repair_results(run_dir: str | Path) -> None:
    """Drop a torn last line (a kill mid-write) so that appending continues on a clean line."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        return
    text = path.read_text(encoding="utf-8")
    if text and not text.endswith("\n"):
        path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json of a run (empty when absent, e.g. a results file copied alone)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def finished_ids(records: Iterable[ProblemRecord]) -> set[str]:
    return {r.problem_id for r in records}
