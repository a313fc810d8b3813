"""Terminal output for one solved problem: the answer, the vote split, one row per stream."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from aimo_infer.solve.controller import ProblemResult
from aimo_infer.solve.genselect import GenSelectRecord


def print_problem_result(result: ProblemResult, show_text: bool = False,
                         console: Console | None = None) -> None:
    """Print what a competitor wants to see after a solve."""
    console = console or Console()
    table = Table(title=f"{len(result.streams)} streams", show_lines=False)
    for column in ("#", "seed", "end", "answer", "tokens", "code", "time s"):
        table.add_column(column, justify="right" if column not in ("end",) else "left")
    for s in result.streams:
        code = f"{s.num_code_calls}"
        if s.code_calls:
            bad = sum(c.status != "ok" for c in s.code_calls)
            code += f" ({bad} failed)" if bad else ""
        elapsed = s.elapsed_s
        table.add_row(str(s.index), str(s.seed), s.end or "?",
                      "-" if s.answer is None else str(s.answer), str(s.tokens), code,
                      "-" if elapsed is None else f"{elapsed:.1f}")
    console.print(table)
    if show_text:
        for s in result.streams:
            console.rule(f"stream {s.index} (seed {s.seed})")
            console.print(s.text, markup=False, highlight=False)
    console.print(f"votes: {result.vote.split()}")
    console.print(f"stopped: {result.stop_reason} after {result.elapsed_s:.1f} s, "
                  f"{result.total_tokens} tokens ({result.tokens_per_s:.0f} tok/s)")
    if result.genselect is not None:
        console.print(genselect_line(result.genselect), markup=False, highlight=False)
    answer = "none (no stream produced a valid answer)" if result.answer is None else result.answer
    console.print(f"[bold]answer: {answer}[/bold]")


def genselect_line(record: GenSelectRecord) -> str:
    """One line: whether GenSelect ran, its judgments, both choices and its time."""
    if not record.ran:
        return f"genselect: did not run ({record.reason})"
    picks = ", ".join("-" if j.index is None else f"#{j.index}->{j.answer}"
                      for j in record.judgments)
    shown = ", ".join(str(c["answer"]) for c in record.candidates)
    verdict = (f"changed {record.ordinary} -> {record.chosen}" if record.changed
               else f"kept {record.ordinary}")
    return (f"genselect: ran ({record.reason}); candidates [{shown}]; judgments [{picks}]; "
            f"{verdict}; {record.elapsed_s:.1f} s")
