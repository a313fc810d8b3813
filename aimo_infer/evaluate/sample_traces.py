"""Per-sample traces of real models (answers and lengths, many samples per problem) turned into
simulated runs: draw n samples per problem, arrival time = length / tokens per second.

The format is the one in data/traces/ (one problem per line: ``problem_id``, ``model``,
``dataset``, ``reference_answer``, ``samples: [{answer, tokens, correct}]``). Answers are read
as the AIMO-3 harness would read a box: an integer in 0-99999, anything else is no answer.
"""

from __future__ import annotations

import functools
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from aimo_infer.errors import DataError, MissingFile
from aimo_infer.evaluate.runs import RESULTS
from aimo_infer.evaluate.simulate import SimProblem, SimStream
from aimo_infer.solve.answer import parse_integer
from aimo_infer.solve.ranges import to_profile


@dataclass(frozen=True)
class Sample:
    answer: int | None
    tokens: int  # 0 for a failed request: it arrives at once, without an answer


@dataclass(frozen=True)
class SampledProblem:
    """All recorded samples of one problem by one model."""

    problem_id: str
    model: str
    dataset: str
    reference: int
    samples: tuple[Sample, ...]


def is_sample_trace(path: Path) -> bool:
    """A per-sample trace file, or a folder of them (rather than a dry-run directory)."""
    if path.is_dir():
        return not (path / RESULTS).exists() and any(path.glob("*.jsonl"))
    return path.suffix == ".jsonl"


def load_sampled_problems(path: str | Path) -> list[SampledProblem]:
    """Every problem in a trace file, or in every ``*.jsonl`` of a folder (sorted by name)."""
    root = Path(path)
    if not root.exists():
        raise MissingFile(f"trace path not found: {root}")
    files = sorted(root.glob("*.jsonl")) if root.is_dir() else [root]
    if not files:
        raise MissingFile(f"no *.jsonl trace files in {root}")
    problems: list[SampledProblem] = []
    for file in files:
        for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                problems.append(_parse(file, number, line))
    return problems


def _parse(file: Path, number: int, line: str) -> SampledProblem:
    try:
        row = json.loads(line)
        reference = parse_integer(str(row["reference_answer"]))
        if reference is None:
            raise DataError(f"reference answer {row['reference_answer']!r} is not an integer")
        samples = tuple(Sample(_answer(None if s.get("answer") is None else str(s["answer"])), int(s.get("tokens") or 0))
                        for s in row["samples"])
        return SampledProblem(str(row["problem_id"]), str(row.get("model", file.stem)),
                              str(row.get("dataset", "")), reference, samples)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise DataError(f"{file}:{number}: not a per-sample trace record ({exc})") from exc


@functools.lru_cache(maxsize=65536)
def _answer(raw: str | None) -> int | None:
    if raw is None:
        return None
    value = parse_integer(raw)
    return None if value is None else to_profile(value, "aimo3")


def draw_problem(problem: SampledProblem, num_streams: int, tok_s: float,
                 rng: random.Random) -> SimProblem:
    """``num_streams`` samples drawn without replacement, each arriving at length / ``tok_s``."""
    if num_streams > len(problem.samples):
        raise DataError(f"{problem.model} {problem.problem_id}: {num_streams} streams asked, "
                         f"{len(problem.samples)} samples recorded")
    drawn = rng.sample(problem.samples, num_streams)
    streams = tuple(SimStream(s.answer, s.tokens / tok_s, s.tokens) for s in drawn)
    return SimProblem(problem.problem_id, problem.dataset, streams,
                      {problem.reference: True})


def draw_run(problems: Sequence[SampledProblem], num_streams: int, tok_s: float,
             rng: random.Random) -> list[SimProblem]:
    """One run: the problems in a shuffled (gateway) order, n samples each."""
    order = list(problems)
    rng.shuffle(order)
    return [draw_problem(p, num_streams, tok_s, rng) for p in order]


def group_by_model(problems: Sequence[SampledProblem]) -> dict[str, list[SampledProblem]]:
    """Problems per model (all datasets of a model form one run, as one submission would)."""
    groups: dict[str, list[SampledProblem]] = {}
    for p in problems:
        groups.setdefault(p.model, []).append(p)
    return groups
