"""``aimo-infer dryrun``: the submission, timed, over a local problem set, graded.

Problems are served in the gateway's order (its seeded polars sample), one at a time, to the
submission's own ``Predictor``: the same time budget, wind-down, watchdog, engine supervision,
fallback answer and row check as on Kaggle. Every served problem is graded and appended to
``results.jsonl`` at once, so a run killed halfway and started again on the same directory
skips what is done.

Time limit scaled to the subset: the budget's ``total_s`` becomes a per-problem share times the
number of problems (default share: ``total_s / num_problems`` of the config, 5 h / 50 = 360 s),
and the safety margin shrinks in proportion. The budget clock runs only while problems are
served: engine start-up and grading are not charged.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, ConfigError, GenSelectConfig, check_setting
from aimo_infer.evaluate.datasets import Problem, load_dataset, select
from aimo_infer.evaluate.grade import grade
from aimo_infer.evaluate.run_budget import Stopwatch, replay_budget, scaled_budget
from aimo_infer.evaluate.runs import (
    CONFIG,
    RESULTS,
    TRACES,
    ProblemRecord,
    StreamRecord,
    append_result,
    read_results,
    repair_results,
)
from aimo_infer.kaggle.budget import Allotment, wind_down
from aimo_infer.kaggle.gateway import check_row, shuffled
from aimo_infer.kaggle.predict import Predictor, SerialTraceWriter
from aimo_infer.solve.controller import ProblemResult
from aimo_infer.solve.vote import Answer

DEFAULT_RUNS_DIR = Path("runs")
DEFAULT_DATASET = "comp-math"  # the bundled Comp-Math-24-25


def serving_order(problems: Sequence[Problem], seed: int) -> list[Problem]:
    """The problems in the order the gateway serves them with ``seed`` (its polars sample)."""
    rows = shuffled(pl.DataFrame({"row": range(len(problems))}, schema={"row": pl.Int64}), seed)
    return [problems[i] for i in rows["row"]]


def check_resumable(run_dir: Path, run_config: dict[str, Any]) -> None:
    """``--out`` must be new, empty, or a run of the same dataset (and serving seed) with the
    same engine and solve settings. Anything else is refused before a byte is written: a
    foreign directory keeps its files, and two datasets or configs never mix in one run."""
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise ConfigError(f"--out {run_dir} is a file, not a directory")
    path = run_dir / CONFIG
    if not path.is_file():
        if any(run_dir.iterdir()):
            raise ConfigError(f"--out {run_dir} is not empty and holds no dry run (no {CONFIG}); "
                              "use a new --out")
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not a dry-run config (not valid JSON); use a new --out") \
            from exc
    if not (isinstance(before, dict) and isinstance(before.get("config"), dict)
            and "dataset" in before):
        raise ConfigError(f"{path}: not a dry-run config; use a new --out")
    same_data = before["dataset"] == run_config["dataset"] and before.get(
        "dataset_digest", run_config["dataset_digest"]) == run_config["dataset_digest"]
    if not same_data:
        raise ConfigError(f"{run_dir} holds a run of another dataset ({before['dataset']}, "
                          f"{before.get('dataset_path')}); use a new --out")
    if before.get("shuffle_seed") != run_config["shuffle_seed"]:
        raise ConfigError(f"{run_dir} was served in another order (shuffle seed "
                          f"{before.get('shuffle_seed')}); use a new --out")
    for section in ("engine", "solve", "genselect"):
        old, new = before["config"].get(section), run_config["config"][section]
        if section == "genselect" and old is None:  # a run from before GenSelect: it was off
            old = dataclasses.asdict(GenSelectConfig())
        if old != new:
            old = old if isinstance(old, dict) else {}
            keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            raise ConfigError(f"{run_dir} was started with other {section} settings "
                              f"({', '.join(f'{section}.{k}' for k in keys)}); use a new --out")


@dataclass(frozen=True)
class ProblemTiming:
    """When a problem ran and what the time budget granted and charged it."""

    start: float  # the allotment's start, on the clock the controller ran on
    allotment: Allotment
    deadline_s: float  # the controller's deadline, from ``start``
    used_s: float  # charged to the budget
    bank_before_s: float
    bank_after_s: float


def grade_result(result: ProblemResult | None, problem: Problem, order: int,
                 submitted: Answer | None, timing: ProblemTiming,
                 outcome: str = "answered") -> ProblemRecord:
    """The record of a served problem: the submitted answer and every stream graded. A call
    the predictor cut or failed (no result) is recorded with its ``outcome`` as stop reason."""
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
    for s in result.streams if result is not None else []:
        finish = s.finished_at if s.finished_at is not None else start + result.elapsed_s
        streams.append(StreamRecord(
            s.index, s.seed, s.end, s.answer, judge(s.answer)[0], s.tokens, s.num_code_calls,
            sum(c.elapsed_s for c in s.code_calls), s.started_at - start, finish - start,
            s.error, s.confidence, s.end_detail))
    if result is None or result.stop_reason == "deadline":
        decision = min(timing.deadline_s, timing.used_s)
    else:  # the controller decided when the last voting stream came in
        decision = max((s.finish_s for s in streams if s.votes), default=0.0)
    correct, method = judge(submitted)
    allotment = timing.allotment
    genselect = None if result is None or result.genselect is None else {  # both graded
        **result.genselect.to_record(), "ordinary_correct": judge(result.genselect.ordinary)[0]}
    return ProblemRecord(
        problem.id, problem.source, order, problem.answer,
        None if result is None else result.answer, submitted, correct, method,
        [] if result is None else [(a, c) for a, c in result.vote.counts],
        0 if result is None else result.vote.num_missing,
        outcome if result is None else result.stop_reason,
        timing.used_s if result is None else result.elapsed_s, timing.used_s, decision,
        allotment.base_s, allotment.extra_s, allotment.seconds, timing.deadline_s,
        timing.bank_before_s, timing.bank_after_s,
        0 if result is None else result.total_tokens, streams, genselect)


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


def run_problems(config: Config, order: Sequence[Problem], run_dir: Path,
                 display: ProgressDisplay | None = None, engine: Engine | None = None,
                 clock: Callable[[], float] = time.monotonic) -> list[ProblemRecord]:
    """Serve the problems of ``order`` not yet in ``run_dir`` to the submission's ``Predictor``
    (watchdog, engine supervision, fallback, wind-down), check each row as the gateway does,
    grade it and append it at once.

    ``engine`` replaces the configured one and ``clock`` the wall clock (tests). The engine
    loads before the budget's clock starts, and the clock stops between problems (grading is
    not charged). The budget is first replayed over the finished problems (their charged
    times, in the order they ran), so a resumed run continues with the bank it had.
    """
    repair_results(run_dir)
    ids = {p.id for p in order}
    done = sorted((r for r in read_results(run_dir) if r.problem_id in ids) if
                  (run_dir / RESULTS).exists() else [], key=lambda r: r.order)
    done_ids = {r.problem_id for r in done}
    todo = [(i, p) for i, p in enumerate(order) if p.id not in done_ids]
    if not todo:
        return []
    served = copy.deepcopy(config)
    served.submission.load = "eager"  # loading is not charged: it ends before the clock starts
    watch = Stopwatch(clock)
    tracer = SerialTraceWriter(str(run_dir / TRACES))
    predictor = Predictor(
        served, engine_factory=create_engine if engine is None else (lambda _: engine),
        tracer=tracer, num_problems=len(order), clock=watch,
        row_profile="aimo3" if config.solve.profile == "free" else None)
    new: list[ProblemRecord] = []
    try:
        predictor.start()
        watch.advance(replay_budget(predictor.budget, [r.used_s for r in done], watch()))
        if display is not None:  # only once the engine is up: a failed start prints one line
            display.start()
        try:
            for index, problem in todo:
                record = serve_one(predictor, watch, problem, index)
                append_result(run_dir, record)
                tracer.sync()
                new.append(record)
                if display is not None:
                    display.add(record, predictor.budget.bank_s)
        finally:
            if display is not None:
                display.stop()
    finally:
        predictor.close()
        tracer.close()
    return new


def serve_one(predictor: Predictor, watch: Stopwatch, problem: Problem, order: int) \
        -> ProblemRecord:
    """One ``predict`` call as the gateway makes it (the id and problem as one-row Series),
    the row checked as the gateway checks it, the call graded."""
    profile = predictor.config.solve.profile
    served_id = pl.Series("id", [problem.id])
    bank_before = predictor.budget.bank_s
    watch.resume()
    try:
        row = predictor.predict(served_id, pl.Series("problem", [problem.problem]))
    finally:
        watch.pause()
    call = predictor.calls[-1]
    row = check_row(row, served_id, "aimo3" if profile == "free" else profile)
    result = call.result
    submitted: Answer | None = row["answer"][0]
    if profile == "free":
        submitted = None if result is None else result.answer
    sub = predictor.config.submission
    allotment = call.allotment or Allotment(order, 0.0, 0.0, 0.0, call.started_at)
    window = wind_down(allotment.seconds, sub.wind_down_s, sub.return_margin_s)
    timing = ProblemTiming(allotment.deadline - allotment.seconds, allotment, window.solve_s,
                           call.elapsed_s, bank_before, predictor.budget.bank_s)
    return grade_result(result, problem, order, submitted, timing, call.outcome)


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
    """``aimo-infer dryrun [DATASET]``."""
    from aimo_infer.cli import add_run_options

    p = sub.add_parser(
        "dryrun", help="timed local run over a problem set, graded, with a report",
        description="Serve a problem set to the submission's own predict, as the Kaggle "
        "gateway would (its seeded shuffle, one at a time; the time budget, wind-down, "
        "watchdog, engine restarts and fallback answer of the submission), grade every answer, "
        "and write traces, results and a report to the output directory. Started again on the "
        "same directory it skips finished problems. The time limit is scaled to the subset: a "
        "per-problem share (default: config total_s / num_problems) times the number of "
        "problems; the clock stops while the engine loads and between problems.",
    )
    p.add_argument("dataset", nargs="?", default=DEFAULT_DATASET,
                   help="comp-math (Comp-Math-24-25, the default), comp-math-int, "
                   "aimo-reference, holdout, or a .jsonl/.csv file with id, problem[, answer, "
                   "source]")
    add_run_options(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default: runs/dryrun-NAME); "
                   "an existing run of the same dataset and settings is resumed, any other "
                   "non-empty directory refused")
    p.add_argument("--limit", type=int, metavar="N", help="first N problems (after filters)")
    p.add_argument("--ids", metavar="ID,...", help="only these problem ids")
    p.add_argument("--source", metavar="NAME,...", help="only these sources (e.g. aime25)")
    p.add_argument("--per-problem-s", type=float, metavar="S",
                   help="time share per problem; the limit is S x number of problems")
    p.add_argument("--time-limit", type=float, metavar="S", help="total time limit (s)")
    p.add_argument("--shuffle-seed", type=int, metavar="N",
                   help="the gateway's serving order seed (default: the run seed)")
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
    for flag, value in (("--per-problem-s", args.per_problem_s),
                        ("--time-limit", args.time_limit)):
        if value is not None:
            check_setting("budget.total_s", value, flag)
    config.budget = scaled_budget(config.budget, len(problems), args.per_problem_s,
                                  args.time_limit)
    seed = config.solve.run_seed if args.shuffle_seed is None else args.shuffle_seed
    order = serving_order(problems, seed)
    run_dir = Path(args.out) if args.out else DEFAULT_RUNS_DIR / f"dryrun-{dataset.name}"
    run_config = {
        "dataset": dataset.name, "dataset_path": str(dataset.path),
        "dataset_digest": dataset.digest, "shuffle_seed": seed,
        "order": [p.id for p in order], "config": dataclasses.asdict(config),
    }
    return config, order, run_dir, run_config


def cmd_dryrun(args: argparse.Namespace) -> int:
    config, order, run_dir, run_config = prepare(args)
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
        run_problems(config, order, run_dir, display)
    if not args.no_report:
        from aimo_infer.evaluate.report import write_report

        report = write_report(run_dir)
        console.print(f"report: {run_dir / 'report.md'} (accuracy "
                      f"{report['summary']['accuracy_text']})")
    return 0
