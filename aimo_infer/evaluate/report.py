"""The dry-run report: report.json (every metric), report.md (for people) and PNG plots.

Definitions (per problem, then averaged; only problems with a reference answer are graded):
- accuracy: the submitted answer is right (the number Kaggle would score).
- pass@1: the share of the problem's voting streams whose answer is right (no answer = wrong).
- maj@k: the majority vote of the voting streams (k = how many voted) is right.
- pass@k: some stream wrote the right answer (cancelled streams' partial answers included).
- selection loss: pass@k minus accuracy, the share lost choosing among generated answers.
- early-stop savings: what a problem stopped by the policy would have cost had it waited for
  every stream (up to its deadline), estimated by the simulator with the "wait for all" policy
  (each cut stream keeps its own token rate and ends at the median length of the run's longer
  self-ended streams); savings = that estimate minus the time charged.
- GenSelect (when switched on): accuracy with it (what was submitted) and without it (the
  ordinary rule's choice, recorded and graded beside it), fixed and broken answers, its time.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aimo_infer.errors import DataError
from aimo_infer.evaluate.report_confidence import confidence_section, render_confidence
from aimo_infer.evaluate.runs import (
    REPORT_JSON,
    REPORT_MD,
    ProblemRecord,
    read_results,
    read_run_config,
)
from aimo_infer.evaluate.simulate import LengthModel, problem_from_record, simulate_problem
from aimo_infer.solve.policies import AnyOf
from aimo_infer.solve.vote import majority_vote


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def problem_scores(r: ProblemRecord) -> dict[str, Any]:
    """pass@1, maj@k and pass@k of one problem (None when it has no reference)."""
    voting = [s for s in r.streams if s.votes]
    if r.reference is None:
        return {"pass@1": None, "maj@k": None, "pass@k": None, "k": len(voting)}
    maj = majority_vote([s.answer for s in voting]).answer
    right = {s.answer for s in r.streams if s.correct and s.answer is not None}
    return {
        "pass@1": _mean([1.0 if s.correct else 0.0 for s in voting]) or 0.0,
        "maj@k": maj is not None and maj in right,
        "pass@k": bool(right),
        "k": len(voting),
    }


def source_table(records: Sequence[ProblemRecord]) -> list[dict[str, Any]]:
    """Accuracy, pass@1, maj@k, pass@k, selection loss, no-answer rate per source, then all."""
    groups: dict[str, list[ProblemRecord]] = {}
    for r in records:
        groups.setdefault(r.source, []).append(r)
    rows = [_source_row(name, rs) for name, rs in sorted(groups.items())]
    if len(groups) != 1:
        rows.append(_source_row("all", list(records)))
    return rows


def _source_row(name: str, records: Sequence[ProblemRecord]) -> dict[str, Any]:
    graded = [r for r in records if r.correct is not None]
    scores = [problem_scores(r) for r in graded]
    accuracy = _mean([1.0 if r.correct else 0.0 for r in graded])
    pass_k = _mean([1.0 if s["pass@k"] else 0.0 for s in scores])
    return {
        "source": name,
        "problems": len(records),
        "graded": len(graded),
        "correct": sum(bool(r.correct) for r in graded),
        "accuracy": accuracy,
        "pass@1": _mean([s["pass@1"] for s in scores]),
        "maj@k": _mean([1.0 if s["maj@k"] else 0.0 for s in scores]),
        "pass@k": pass_k,
        "selection_loss": None if accuracy is None or pass_k is None else pass_k - accuracy,
        "no_answer_rate": _mean([1.0 if r.answer is None else 0.0 for r in records]),
    }


def time_section(records: Sequence[ProblemRecord], budget: dict[str, Any]) -> dict[str, Any]:
    """Time per problem and how the bank was used, in serving order."""
    ordered = sorted(records, key=lambda r: r.order)
    used = [r.used_s for r in ordered]
    total = budget.get("total_s")
    return {
        "total_s": sum(used),
        "mean_s": _mean(used),
        "median_s": statistics.median(used) if used else None,
        "max_s": max(used, default=None),
        "budget_total_s": total,
        "budget_used": None if not total else sum(used) / total,
        "base_s": budget.get("base_s"),
        "max_extra_s": budget.get("max_extra_s"),
        "deadline_hits": sum(r.stop_reason == "deadline" for r in ordered),
        "extra_drawn_s": sum(r.extra_s for r in ordered),
        "per_problem": [
            {"order": r.order, "problem_id": r.problem_id, "used_s": r.used_s,
             "allotted_s": r.allotted_s, "extra_s": r.extra_s, "bank_before_s": r.bank_before_s,
             "bank_after_s": r.bank_after_s, "stop_reason": r.stop_reason,
             "correct": r.correct}
            for r in ordered
        ],
    }


def stream_section(records: Sequence[ProblemRecord]) -> dict[str, Any]:
    """Tokens and code calls per stream, how streams ended, the overall token rate."""
    streams = [s for r in records for s in r.streams]
    tokens = [s.tokens for s in streams]
    calls = [s.code_calls for s in streams]
    seconds = sum(r.elapsed_s for r in records)
    return {
        "streams": len(streams),
        "tokens_mean": _mean(tokens),
        "tokens_median": statistics.median(tokens) if tokens else None,
        "tokens_max": max(tokens, default=None),
        "code_calls_mean": _mean(calls),
        "code_calls_max": max(calls, default=None),
        "code_calls_total": sum(calls),
        "ends": dict(Counter(s.end or "?" for s in streams).most_common()),
        "tokens_total": sum(tokens),
        "tokens_per_s": sum(tokens) / seconds if seconds > 0 else None,
    }


def early_stop_section(records: Sequence[ProblemRecord], max_tokens: int) -> dict[str, Any]:
    """Estimated time and tokens saved by stopping early (see the module docstring)."""
    lengths = LengthModel.from_records(records, max_tokens)
    wait_all = AnyOf(())
    rows = []
    for r in records:
        if not r.stopped_early:
            continue
        outcome = simulate_problem(problem_from_record(r, lengths), wait_all, r.deadline_s)
        used = r.used_s - r.genselect_s  # the estimate leaves GenSelect out, so does this
        rows.append({"problem_id": r.problem_id, "used_s": r.used_s,
                     "without_stop_s": outcome.used_s,
                     "saved_s": max(0.0, outcome.used_s - used),
                     "saved_tokens": max(0, outcome.tokens - r.total_tokens),
                     "stop_reason": r.stop_reason})
    return {
        "problems_stopped_early": len(rows),
        "saved_s": sum(row["saved_s"] for row in rows),
        "saved_tokens": sum(row["saved_tokens"] for row in rows),
        "per_problem": rows,
    }


def genselect_section(records: Sequence[ProblemRecord]) -> dict[str, Any] | None:
    """GenSelect's net effect on the same problems: accuracy with it (what was submitted) and
    without it (the ordinary rule's choice, recorded beside it), and the time it cost; None
    when the run had it switched off."""
    considered = [r for r in records if r.genselect is not None]
    if not considered:
        return None
    ran = [r for r in considered if r.genselect_ran]
    graded = [r for r in records if r.correct is not None]
    return {
        "considered": len(considered),
        "ran": len(ran),
        "changed": sum(bool(r.genselect and r.genselect.get("changed")) for r in ran),
        "fixed": sum(bool(r.correct) and r.ordinary_correct is False for r in ran),
        "broke": sum(r.correct is False and bool(r.ordinary_correct) for r in ran),
        "accuracy_with": _mean([1.0 if r.correct else 0.0 for r in graded]),
        "accuracy_without": _mean([1.0 if r.ordinary_correct else 0.0 for r in graded]),
        "time_s": sum(r.genselect_s for r in ran),
        "mean_s": _mean([r.genselect_s for r in ran]),
        "not_run": dict(Counter(str(r.genselect.get("reason")) for r in considered
                                if not r.genselect_ran and r.genselect is not None)),
    }


def wrong_answers(records: Sequence[ProblemRecord]) -> list[dict[str, Any]]:
    """Problems got wrong, with their vote split and whether any stream had the answer."""
    return [
        {"problem_id": r.problem_id, "source": r.source, "reference": r.reference,
         "submitted": r.submitted, "votes": r.vote_split(), "stop_reason": r.stop_reason,
         "used_s": r.used_s, "right_answer_generated": problem_scores(r)["pass@k"]}
        for r in sorted(records, key=lambda r: r.order) if r.correct is False
    ]


def build_report(run_dir: str | Path) -> dict[str, Any]:
    """Every metric of a run, from its results and config."""
    records = read_results(run_dir)
    if not records:
        raise DataError(f"{run_dir}: no finished problems to report on")
    run_config = read_run_config(run_dir)
    config = run_config.get("config", {})
    solve = config.get("solve", {})
    max_tokens = int(solve.get("sampling", {}).get("max_tokens", 4096))
    sources = source_table(records)
    overall = sources[-1]
    text = ("-" if overall["accuracy"] is None
            else f"{overall['correct']}/{overall['graded']} = {_pct(overall['accuracy'])}")
    return {
        "run_dir": str(run_dir),
        "dataset": run_config.get("dataset"),
        "engine": config.get("engine", {}),
        "solve": {k: solve.get(k) for k in ("num_streams", "stop_policy", "profile", "prompt",
                                            "run_seed")},
        "summary": {
            "problems": len(records),
            "planned": len(run_config.get("order", [])) or None,
            "accuracy": overall["accuracy"],
            "accuracy_text": text,
            "pass@1": overall["pass@1"],
            "maj@k": overall["maj@k"],
            "pass@k": overall["pass@k"],
            "selection_loss": overall["selection_loss"],
            "no_answer_rate": overall["no_answer_rate"],
        },
        "by_source": sources,
        "time": time_section(records, config.get("budget", {})),
        "streams": stream_section(records),
        "early_stop": early_stop_section(records, max_tokens),
        "genselect": genselect_section(records),
        "wrong": wrong_answers(records),
        "confidence": confidence_section(records, solve),
    }


def render_markdown(report: dict[str, Any], plots: Sequence[str] = ()) -> str:
    """report.md: the summary, tables per source, time, streams, early stop, wrong answers."""
    s, t, st, es = report["summary"], report["time"], report["streams"], report["early_stop"]
    solve = report["solve"]
    lines = [
        f"# Dry run: {report.get('dataset') or report['run_dir']}",
        "",
        f"Engine `{report['engine'].get('name')}` ({report['engine'].get('model') or 'default'}"
        f"), {solve['num_streams']} streams, policy `{solve['stop_policy']}`, profile "
        f"`{solve['profile']}`, prompt `{solve['prompt']}`, seed {solve['run_seed']}.",
        "",
        f"**Accuracy {s['accuracy_text']}** on {s['problems']} problems"
        + (f" (of {s['planned']} planned)" if s["planned"] and s["planned"] != s["problems"]
           else "")
        + f"; pass@k {_pct(s['pass@k'])}, selection loss {_pct(s['selection_loss'])}, "
        f"no answer {_pct(s['no_answer_rate'])}.",
        "",
        "## By source",
        "",
        "| source | problems | accuracy | pass@1 | maj@k | pass@k | selection loss | no answer |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in report["by_source"]:
        lines.append(
            f"| {row['source']} | {row['problems']} | {_pct(row['accuracy'])} | "
            f"{_pct(row['pass@1'])} | {_pct(row['maj@k'])} | {_pct(row['pass@k'])} | "
            f"{_pct(row['selection_loss'])} | {_pct(row['no_answer_rate'])} |")
    budget = t["budget_total_s"]
    lines += [
        "",
        "## Time",
        "",
        f"{t['total_s']:.1f} s in all"
        + (f" of a {budget:.0f} s limit ({_pct(t['budget_used'])})" if budget else "")
        + f"; per problem mean {t['mean_s']:.1f} s, median {t['median_s']:.1f} s, max "
        f"{t['max_s']:.1f} s; {t['deadline_hits']} deadline hit(s); "
        f"{t['extra_drawn_s']:.1f} s granted from the bank (base {t['base_s']} s, cap "
        f"{t['max_extra_s']} s).",
        "",
        "## Streams",
        "",
        f"{st['streams']} streams: tokens mean {st['tokens_mean']:.0f}, median "
        f"{st['tokens_median']:.0f}, max {st['tokens_max']}; code calls mean "
        f"{st['code_calls_mean']:.2f}, max {st['code_calls_max']}; "
        f"{_rate(st['tokens_per_s'])}. Ends: "
        + ", ".join(f"{k} {v}" for k, v in st["ends"].items()) + ".",
        "",
        "## Early stopping",
        "",
        f"{es['problems_stopped_early']} problem(s) stopped early; estimated savings "
        f"{es['saved_s']:.1f} s and {es['saved_tokens']} tokens against waiting for every "
        "stream (estimate: cut streams keep their token rate and end at the median length of "
        "the run's longer self-ended streams).",
        "",
    ]
    lines += genselect_lines(report.get("genselect"))
    lines += [
        "## Wrong answers",
        "",
    ]
    if report["wrong"]:
        lines += ["| problem | source | reference | submitted | votes | stop | time s | "
                  "generated |", "|---|---|---|---|---|---|---:|---|"]
        for w in report["wrong"]:
            lines.append(
                f"| {w['problem_id']} | {w['source']} | {_cell(w['reference'])} | "
                f"{_cell(w['submitted'])} | {_cell(w['votes'])} | {w['stop_reason']} | "
                f"{w['used_s']:.1f} | {'yes' if w['right_answer_generated'] else 'no'} |")
    else:
        lines.append("None.")
    lines += render_confidence(report.get("confidence"))
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines) + "\n"


def genselect_lines(section: dict[str, Any] | None) -> list[str]:
    """The GenSelect paragraph of report.md (nothing when it was switched off)."""
    if section is None:
        return []
    mean = section["mean_s"]
    return [
        "## GenSelect",
        "",
        f"Ran on {section['ran']} of {section['considered']} problem(s) and changed "
        f"{section['changed']} answer(s): {section['fixed']} fixed, {section['broke']} broken. "
        f"Accuracy with it {_pct(section['accuracy_with'])}, without it "
        f"{_pct(section['accuracy_without'])} (same problems, both choices recorded); it cost "
        f"{section['time_s']:.1f} s" + ("" if mean is None else
                                          f" ({mean:.1f} s per problem it ran on)")
        + ". Not run: " + (", ".join(f"{k} {v}" for k, v in section["not_run"].items())
                           or "-") + ".",
        "",
    ]


def _rate(value: float | None) -> str:
    return "rate -" if value is None else f"{value:.0f} tok/s over the run"


def _cell(value: object) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(run_dir: str | Path) -> dict[str, Any]:
    """Write report.json, the plots and report.md into ``run_dir``; returns the report."""
    from aimo_infer.evaluate.plots import write_plots

    run_dir = Path(run_dir)
    report = build_report(run_dir)
    plots = write_plots(read_results(run_dir), report, run_dir)
    report["plots"] = [Path(p).name for p in plots]
    (run_dir / REPORT_JSON).write_text(json.dumps(report, indent=2, default=str) + "\n",
                                       encoding="utf-8")
    (run_dir / REPORT_MD).write_text(render_markdown(report, plots), encoding="utf-8")
    return report


def add_report_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``aimo-infer report RUN_DIR``."""
    p = sub.add_parser("report", help="write report.md, report.json and plots for a dry run",
                       description="Rebuild the report of a dry-run directory from its "
                       "results (also written at the end of every dry run).")
    p.add_argument("run_dir", help="a dry-run output directory")
    p.set_defaults(func=_cmd_report)


def _cmd_report(args: argparse.Namespace) -> int:
    report = write_report(args.run_dir)
    print(f"{Path(args.run_dir) / REPORT_MD}: accuracy {report['summary']['accuracy_text']}")
    return 0
