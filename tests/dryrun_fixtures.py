"""Synthetic problem sets, scripted engines and run records for the dry-run, report and
simulator tests (the right answer of every problem is known)."""

from __future__ import annotations

import json
import random
from pathlib import Path

from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.config import Config
from aimo_infer.evaluate.datasets import Problem
from aimo_infer.evaluate.dryrun import run_problems
from aimo_infer.evaluate.run_budget import scaled_budget
from aimo_infer.evaluate.runs import ProblemRecord, StreamRecord, read_results
from aimo_infer.solve.controller import stream_seed

TOKENS_APART = 24  # streams end this many engine steps apart: the controller sees each alone


def synthetic_problems(count: int, source: str = "synthetic") -> list[Problem]:
    return [Problem(f"p{i}", f"Problem {i}: what is {i} + 1?", str(i + 1), source)
            for i in range(count)]


def write_jsonl(path: Path, problems: list[Problem]) -> Path:
    path.write_text("".join(json.dumps({"id": p.id, "problem": p.problem, "answer": p.answer,
                                        "source": p.source}) + "\n" for p in problems))
    return path


def scripts_for(problems: list[Problem], num_streams: int, seed: int = 1,
                p_right: float = 0.6, run_seed: int = 0) -> dict[int, list[ReplaySegment]]:
    """One segment per stream: a distinct length (so arrivals are ordered) and a boxed answer,
    right with probability ``p_right``, else one of a few wrong ones."""
    rng = random.Random(seed)
    scripts: dict[int, list[ReplaySegment]] = {}
    for p in problems:
        ranks = rng.sample(range(num_streams), num_streams)
        for j in range(num_streams):
            right = rng.random() < p_right
            answer = p.answer if right else rng.choice(["0", "99", "7"])
            length = ranks[j] * TOKENS_APART + 8
            text = "x" * length + f" \\boxed{{{answer}}}"
            scripts[stream_seed(run_seed, p.id, j)] = [ReplaySegment(text, length + 1)]
    return scripts


def cot_config(policy: str, num_streams: int, num_problems: int) -> Config:
    """No code execution (no sandbox needed), the given policy, a budget for the subset."""
    cfg = Config()
    cfg.solve.prompt = "cot"
    cfg.solve.profile = "free"
    cfg.solve.num_streams = num_streams
    cfg.solve.stop_policy = policy
    cfg.budget = scaled_budget(cfg.budget, num_problems)
    return cfg


def record_run(run_dir: Path, problems: list[Problem], policy: str, num_streams: int = 12,
               seed: int = 1, scripted_streams: int = 12) -> tuple[list[ProblemRecord],
                                                                   ReplayEngine]:
    """Solve ``problems`` with the real controller on a scripted engine; the records."""
    engine = ReplayEngine(scripts_for(problems, scripted_streams, seed), yield_every=1)
    cfg = cot_config(policy, num_streams, len(problems))
    run_dir.mkdir(parents=True, exist_ok=True)
    run_problems(cfg, problems, run_dir, engine=engine)
    return read_results(run_dir), engine


def stream(index: int, answer: object, correct: bool | None, finish_s: float, tokens: int = 100,
           end: str = "stop") -> StreamRecord:
    return StreamRecord(index, 1000 + index, end, answer, correct, tokens, 0, 0.0, 0.0,
                        finish_s)  # type: ignore[arg-type]


def record(pid: str, reference: str | None, answer: object, streams: list[StreamRecord],
           stop_reason: str = "all finished", source: str = "s", order: int = 0,
           used_s: float | None = None, deadline_s: float = 340.0) -> ProblemRecord:
    """A hand-made problem record (votes from the voting streams, in finish order)."""
    voting = sorted((s for s in streams if s.votes), key=lambda s: s.finish_s)
    counts: dict[object, int] = {}
    for s in voting:
        if s.answer is not None:
            counts[s.answer] = counts.get(s.answer, 0) + 1
    decision = deadline_s if stop_reason == "deadline" else max(
        (s.finish_s for s in voting), default=0.0)
    correct = None if reference is None else (answer is not None and str(answer) == reference)
    used = decision + 0.1 if used_s is None else used_s
    return ProblemRecord(
        pid, source, order, reference, answer, answer, correct, "exact-int",  # type: ignore[arg-type]
        sorted(counts.items(), key=lambda kv: -kv[1]),  # type: ignore[arg-type]
        sum(s.answer is None for s in voting), stop_reason, used, used, decision, 350.0, 0.0,
        350.0, deadline_s, 0.0, 0.0, sum(s.tokens for s in streams), streams)
