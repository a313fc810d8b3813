"""``aimo-infer dryrun``: the submission path, timed, over a local problem set, graded.

Problems are served in a seeded shuffled order (as the gateway does), one at a time, each with
the deadline the ``TimeBudget`` grants (less the submission's wind-down), with the configured
streams and early stopping. Every finished problem is appended to ``results.jsonl`` at once,
so a run killed halfway and started again on the same directory skips what is done.

Time limit scaled to the subset: the budget's ``total_s`` becomes a per-problem share times the
number of problems (default share: ``total_s / num_problems`` of the config, 5 h / 50 = 360 s),
and the safety margin shrinks in proportion. The budget clock runs only while problems are
solved: engine start-up and grading are not charged.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, ConfigError
from aimo_infer.evaluate.datasets import Problem, load_dataset, select
from aimo_infer.evaluate.grade import grade
from aimo_infer.evaluate.run_budget import scaled_budget, solve_window
from aimo_infer.evaluate.runs import (
    CONFIG,
    RESULTS,
    TRACES,
    VOTING_ENDS,
    ProblemRecord,
    StreamRecord,
    append_result,
    read_results,
    repair_results,
)
from aimo_infer.kaggle.budget import Allotment, TimeBudget
from aimo_infer.solve.controller import Controller, ProblemResult
from aimo_infer.solve.vote import Answer
from aimo_infer.traces import TraceWriter

DEFAULT_RUNS_DIR = Path("runs")


def serving_order(problems: Sequence[Problem], seed: int) -> list[Problem]:
    """The problems shuffled with ``seed``, as the gateway serves them."""
    order = list(problems)
    random.Random(seed).shuffle(order)
    return order


def check_resumable(run_dir: Path, run_config: dict[str, Any]) -> None:
    """A directory with results from other engine or solve settings cannot be continued."""
    path = run_dir / CONFIG
    if not path.is_file() or not (run_dir / RESULTS).is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg}); use a new --out") from exc
    for section in ("engine", "solve"):
        old, new = before.get("config", {}).get(section), run_config["config"][section]
        if old is not None and old != new:
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{run_dir} was started with other {section} settings "
                              f"({', '.join(f'{section}.{k}' for k in keys)}); use a new --out")


@dataclass(frozen=True)
class ProblemTiming:
    """When a problem ran and what the time budget granted and charged it."""

    start: float  # controller clock at the problem's start
    allotment: Allotment
    deadline_s: float  # the controller's deadline, from ``start``
    used_s: float  # charged to the budget
    bank_before_s: float
    bank_after_s: float


def grade_result(result: ProblemResult, problem: Problem, order: int,
                 submitted: Answer | None, timing: ProblemTiming) -> ProblemRecord:
    """The record of a solved problem: the submitted answer and every stream graded."""
    cache: dict[Answer, tuple[bool, str]] = {}

    def judge(answer: Answer | None) -> tuple[bool | None, str]:
        if problem.answer is None:
            return None, "none"
        if answer is None:
            return False, "none"
        if answer not in cache:
            verdict = grade(answer, problem.answer)
            cache[answer] = (verdict.correct, verdict.method)
        return cache[answer]

    start = timing.start
    streams = []
    for s in result.streams:
        finish = s.finished_at if s.finished_at is not None else start + result.elapsed_s
        streams.append(StreamRecord(
            s.index, s.seed, s.end, s.answer, judge(s.answer)[0], s.tokens, s.num_code_calls,
            sum(c.elapsed_s for c in s.code_calls), s.started_at - start, finish - start,
            s.error, s.confidence, s.end_detail))
    if result.stop_reason == "deadline":
        decision = timing.deadline_s
    else:  # the controller decided when the last voting stream came in
        decision = max((s.finish_s for s in streams if s.end in VOTING_ENDS), default=0.0)
    correct, method = judge(submitted)
    allotment = timing.allotment
    return ProblemRecord(
        problem.id, problem.source, order, problem.answer, result.answer, submitted, correct,
        method, [(a, c) for a, c in result.vote.counts], result.vote.num_missing,
        result.stop_reason, result.elapsed_s, timing.used_s, decision, allotment.base_s,
        allotment.extra_s, allotment.seconds, timing.deadline_s, timing.bank_before_s,
        timing.bank_after_s, result.total_tokens, streams)


def submitted_answer(answer: Answer | None, profile: str, fallback: int) -> Answer | None:
    """What the submission would return: aimo profiles give a valid int (fallback when none)."""
    if profile == "free":
        return answer
    from aimo_infer.kaggle.predict import submission_answer

    return submission_answer(answer, profile, fallback)


class ProgressDisplay:
    """Live line: problems done, accuracy so far, time bank, tokens/s; one line per problem."""

    def __init__(self, total: int, done: Sequence[ProblemRecord], enabled: bool = True) -> None:
        self.console = Console(stderr=True)
        self.enabled = enabled
        self.records = list(done)
        self.progress = Progress(
            TextColumn("[bold]dry run"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
            console=self.console, disable=not enabled,
        )
        self.task = self.progress.add_task("", total=total, completed=len(done),
                                           status=self._status(0.0))

    def _status(self, bank_s: float) -> str:
        graded = [r for r in self.records if r.correct is not None]
        acc = (f"acc {sum(bool(r.correct) for r in graded)}/{len(graded)}" if graded
               else "acc -")
        tokens = sum(r.total_tokens for r in self.records)
        seconds = sum(r.elapsed_s for r in self.records)
        rate = tokens / seconds if seconds > 0 else 0.0
        return f"{acc}  bank {bank_s:.0f}s  {rate:.0f} tok/s"

    def start(self) -> None:
        self.progress.start()

    def stop(self) -> None:
        self.progress.stop()

    def add(self, record: ProblemRecord, bank_s: float) -> None:
        self.records.append(record)
        mark = {True: "[green]right[/]", False: "[red]wrong[/]", None: ""}[record.correct]
        if self.enabled:
            self.progress.console.print(
                f"{record.order + 1:>4} {record.problem_id}: {record.submitted} {mark} "
                f"({record.vote_split()}; {record.stop_reason}; {record.used_s:.1f}s)",
                highlight=False)
        self.progress.update(self.task, advance=1, status=self._status(bank_s))


async def run_problems(config: Config, order: Sequence[Problem], run_dir: Path,
                       display: ProgressDisplay | None = None, engine: Engine | None = None,
                       clock: Callable[[], float] | None = None) -> list[ProblemRecord]:
    """Solve the problems of ``order`` not yet in ``run_dir``, appending each result.

    ``engine`` replaces the configured one and ``clock`` the controller's (tests).
    The budget is first replayed over the finished problems (their charged times, in the order
    they ran), so a resumed run continues with the bank it had.
    """
    from aimo_infer.runtime import harness

    repair_results(run_dir)
    ids = {p.id for p in order}
    done = sorted((r for r in read_results(run_dir) if r.problem_id in ids) if
                  (run_dir / RESULTS).exists() else [], key=lambda r: r.order)
    done_ids = {r.problem_id for r in done}
    todo = [(i, p) for i, p in enumerate(order) if p.id not in done_ids]
    if not todo:
        return []
    budget_now = 0.0
    budget = TimeBudget(config.budget, start=budget_now, num_problems=len(order))
    for r in done:
        budget.settle(budget.allot(budget_now), r.used_s)
        budget_now += r.used_s
    new: list[ProblemRecord] = []
    with TraceWriter(run_dir / TRACES) as tracer:
        async with harness(config, tracer, engine) as controller:
            if clock is not None:
                controller.clock = clock
            if display is not None:  # only once the engine is up: a failed start prints one line
                display.start()
            try:
                await _solve_all(controller, config, todo, budget, budget_now, run_dir, tracer,
                                 display, new)
            finally:
                if display is not None:
                    display.stop()
    return new


async def _solve_all(controller: Controller, config: Config, todo: Sequence[tuple[int, Problem]],
                     budget: TimeBudget, budget_now: float, run_dir: Path, tracer: TraceWriter,
                     display: ProgressDisplay | None, new: list[ProblemRecord]) -> None:
    """Solve, grade and append each problem in turn; ``budget_now`` is the budget's clock,
    which advances only by the time charged for each problem."""
    sub, profile = config.submission, config.solve.profile
    for index, problem in todo:
        allotment = budget.allot(budget_now)
        deadline_s = solve_window(allotment.seconds, sub.wind_down_s)
        bank_before = budget.bank_s
        start = controller.clock()
        result = await controller.solve(problem.id, problem.problem, start + deadline_s)
        used = controller.clock() - start
        budget.settle(allotment, used)
        budget_now += used
        submitted = submitted_answer(result.answer, profile, sub.fallback_answer)
        timing = ProblemTiming(start, allotment, deadline_s, used, bank_before, budget.bank_s)
        record = grade_result(result, problem, index, submitted, timing)
        append_result(run_dir, record)
        tracer.sync()
        new.append(record)
        if display is not None:
            display.add(record, budget.bank_s)


def config_sets_profile(path: str | None) -> bool:
    """Whether a config file names the answer profile (then the dataset's default yields)."""
    if path is None:
        return False
    from aimo_infer.config import tomllib

    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError):
        return False  # load_config reports it
    return "profile" in data.get("solve", {})


def add_dryrun_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``aimo-infer dryrun DATASET``."""
    from aimo_infer.cli import add_run_options

    p = sub.add_parser(
        "dryrun", help="timed local run over a problem set, graded, with a report",
        description="Serve a problem set as the Kaggle gateway would (seeded shuffle, one at a "
        "time, the time budget, early stopping), grade every answer, and write traces, "
        "results and a report to the output directory. Started again on the same directory "
        "it skips finished problems. The time limit is scaled to the subset: a per-problem "
        "share (default: config total_s / num_problems) times the number of problems.",
    )
    p.add_argument("dataset", help="comp-math, comp-math-int, aimo-reference, holdout, or a "
                   ".jsonl/.csv file with id, problem[, answer, source]")
    add_run_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/dryrun-NAME); "
                   "an existing one is resumed")
    p.add_argument("--limit", type=int, metavar="N", help="first N problems (after filters)")
    p.add_argument("--ids", metavar="ID,...", help="only these problem ids")
    p.add_argument("--source", metavar="NAME,...", help="only these sources (e.g. aime25)")
    p.add_argument("--per-problem-s", type=float, metavar="S",
                   help="time share per problem; the limit is S x number of problems")
    p.add_argument("--time-limit", type=float, metavar="S", help="total time limit (s)")
    p.add_argument("--shuffle-seed", type=int, metavar="N",
                   help="serving order seed (default: the run seed)")
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument("--quiet", action="store_true", help="no progress display")
    p.set_defaults(func=cmd_dryrun)


def _split(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def prepare(args: argparse.Namespace) -> tuple[Config, list[Problem], Path, dict[str, Any]]:
    """Everything checked before anything runs: config, dataset, subset, output directory."""
    from aimo_infer.cli import config_from_args
    from aimo_infer.solve.policies import parse_policy

    config = config_from_args(args)
    dataset = load_dataset(args.dataset)
    problems = select(dataset, args.limit, _split(args.ids), _split(args.source))
    if args.profile is None and not config_sets_profile(args.config):
        config.solve.profile = dataset.profile
    parse_policy(config.solve.stop_policy)
    config.budget = scaled_budget(config.budget, len(problems), args.per_problem_s,
                                  args.time_limit)
    seed = config.solve.run_seed if args.shuffle_seed is None else args.shuffle_seed
    order = serving_order(problems, seed)
    run_dir = Path(args.out) if args.out else DEFAULT_RUNS_DIR / f"dryrun-{dataset.name}"
    run_config = {
        "dataset": dataset.name, "dataset_path": str(dataset.path), "shuffle_seed": seed,
        "order": [p.id for p in order], "config": dataclasses.asdict(config),
    }
    return config, order, run_dir, run_config


def cmd_dryrun(args: argparse.Namespace) -> int:
    config, order, run_dir, run_config = prepare(args)
    if run_dir.exists() and not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a directory")
    check_resumable(run_dir, run_config)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / CONFIG).write_text(json.dumps(run_config, indent=2, default=str) + "\n",
                                  encoding="utf-8")
    done = read_results(run_dir) if (run_dir / RESULTS).exists() else []
    ids = {p.id for p in order}
    done = [r for r in done if r.problem_id in ids]
    console = Console(stderr=True, quiet=args.quiet, soft_wrap=True)
    if len(done) == len(order):
        console.print(f"all {len(order)} problems already finished in {run_dir}")
    else:
        if done:
            console.print(f"resuming {run_dir}: {len(done)} of {len(order)} finished")
        display = ProgressDisplay(len(order), done, enabled=not args.quiet)
        asyncio.run(run_problems(config, order, run_dir, display))
    if not args.no_report:
        from aimo_infer.evaluate.report import write_report

        report = write_report(run_dir)
        console.print(f"report: {run_dir / 'report.md'} (accuracy "
                      f"{report['summary']['accuracy_text']})")
    return 0
