"""PNG plots of a dry run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aimo_infer.evaluate.runs import ProblemRecord

COLORS = {True: "#2e7d32", False: "#c62828", None: "#757575"}


def write_plots(records: Sequence[ProblemRecord], report: dict[str, Any],
                run_dir: str | Path) -> list[Path]:
    """Time per problem with the buffer, accuracy by source, votes histogram, stream tokens."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    ordered = sorted(records, key=lambda r: r.order)
    paths = []
    drawings = [("time_per_problem", _time_per_problem),
                ("accuracy_by_source", _accuracy_by_source),
                ("votes_histogram", _votes_histogram),
                ("tokens_per_stream", _tokens_per_stream)]
    if report.get("confidence"):  # recorded with logprobs
        drawings.append(("stream_confidence", _stream_confidence))
    for name, draw in drawings:
        fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
        try:
            draw(ax, ordered, report)
            fig.tight_layout()
            path = run_dir / f"{name}.png"
            fig.savefig(path)
            paths.append(path)
        finally:
            plt.close(fig)
    return paths


def _time_per_problem(ax: Any, records: Sequence[ProblemRecord], report: dict[str, Any]) -> None:
    x = list(range(1, len(records) + 1))
    ax.bar(x, [r.used_s for r in records], color=[COLORS[r.correct] for r in records],
           label="time used (green right, red wrong)")
    ax.step(x, [r.allotted_s for r in records], where="mid", color="#1565c0",
            label="allotted (base + buffer draw)")
    base = report["time"].get("base_s")
    if base:
        ax.axhline(base, color="#1565c0", linestyle=":", linewidth=1, label="base")
    bank = ax.twinx()
    bank.plot(x, [r.bank_after_s for r in records], color="#ef6c00", marker=".",
              label="bank after")
    bank.set_ylabel("bank (s)")
    bank.set_ylim(bottom=0)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("problem (serving order)")
    ax.set_ylabel("seconds")
    ax.set_title("Time per problem and the time bank")
    handles, labels = ax.get_legend_handles_labels()
    more, more_labels = bank.get_legend_handles_labels()
    ax.legend(handles + more, labels + more_labels, loc="upper left", fontsize=8)


def _accuracy_by_source(ax: Any, records: Sequence[ProblemRecord],
                        report: dict[str, Any]) -> None:
    rows = [r for r in report["by_source"] if r["accuracy"] is not None]
    width = 0.2
    for k, (metric, color) in enumerate((("accuracy", "#2e7d32"), ("pass@1", "#90a4ae"),
                                         ("maj@k", "#1565c0"), ("pass@k", "#ef6c00"))):
        ax.bar([i + (k - 1.5) * width for i in range(len(rows))],
               [100 * (row[metric] or 0.0) for row in rows], width, label=metric, color=color)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([f"{r['source']}\n(n={r['graded']})" for r in rows], fontsize=8)
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.set_title("Accuracy by source")
    ax.legend(fontsize=8)


def _votes_histogram(ax: Any, records: Sequence[ProblemRecord], report: dict[str, Any]) -> None:
    """Votes for the chosen answer, stacked by right / wrong / ungraded."""
    most = max([sum(c for _, c in r.votes) + r.num_missing for r in records] + [1])
    groups = [(outcome, label, [r.votes[0][1] if r.votes else 0 for r in records
                                if r.correct is outcome])
              for outcome, label in ((True, "right"), (False, "wrong"), (None, "no reference"))]
    groups = [g for g in groups if g[2]]
    ax.hist([g[2] for g in groups], bins=[b - 0.5 for b in range(most + 2)], stacked=True,
            rwidth=0.8, color=[COLORS[g[0]] for g in groups], label=[g[1] for g in groups])
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("votes for the chosen answer")
    ax.set_ylabel("problems")
    ax.set_title("Agreement behind each answer")
    ax.legend(fontsize=8)


def _tokens_per_stream(ax: Any, records: Sequence[ProblemRecord],
                       report: dict[str, Any]) -> None:
    for outcome, label in ((True, "right answer"), (False, "wrong or none"),
                           (None, "no reference")):
        tokens = [s.tokens for r in records for s in r.streams if s.correct is outcome]
        if tokens:
            ax.hist(tokens, bins=30, alpha=0.6, color=COLORS[outcome], label=label)
    ax.set_xlabel("tokens per stream")
    ax.set_ylabel("streams")
    ax.set_title("Stream lengths")
    ax.legend(fontsize=8)


def _stream_confidence(ax: Any, records: Sequence[ProblemRecord],
                       report: dict[str, Any]) -> None:
    """Lowest sliding-window group confidence of streams with a right vs a wrong answer."""
    for outcome, label in ((True, "right answer"), (False, "wrong answer")):
        values = [float(s.confidence["lowest_group"]) for r in records for s in r.streams
                  if s.confidence and s.answer is not None and s.correct is outcome]
        if values:
            ax.hist(values, bins=30, alpha=0.6, color=COLORS[outcome], label=label)
    ax.set_xlabel("lowest group confidence (DeepConf; higher: surer)")
    ax.set_ylabel("streams")
    ax.set_title("Stream confidence, right vs wrong answers")
    ax.legend(fontsize=8)
