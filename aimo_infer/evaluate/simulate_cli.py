"""``aimo-infer simulate``: what-if tables from recorded runs or per-sample traces.

Scores of simulated settings (expected number right, time, tokens) beside the recorded run,
over one run (a dry-run directory) or many drawn runs (per-sample traces); the simulation
itself is ``aimo_infer.evaluate.simulate``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_infer.config import (
    CONFIDENCE_STOPS,
    SELECT_RULES,
    BudgetConfig,
    ConfigError,
    SubmissionConfig,
    check_setting,
    dataclass_from_table,
)
from aimo_infer.errors import DataError, MissingFile
from aimo_infer.evaluate.run_budget import scaled_budget
from aimo_infer.evaluate.runs import ProblemRecord, read_results, read_run_config
from aimo_infer.evaluate.sample_traces import (
    SampledProblem,
    draw_run,
    group_by_model,
    is_sample_trace,
    load_sampled_problems,
)
from aimo_infer.evaluate.simulate import (
    LengthModel,
    RunOutcome,
    SimOutcome,
    problem_from_record,
    simulate_run,
)
from aimo_infer.solve.policies import PRESETS, ConfidenceStop, parse_policy
from aimo_infer.solve.stream import stopped_early
from aimo_infer.solve.vote import SelectSettings

# Rules near the presets, for sweeps: looser and tighter agreement, earlier and later quorum.
NEARBY_RULES: tuple[str, ...] = (
    "agree=3of4", "agree=4of6", "agree=5of6", "agree=3", "agree=5", "agree=6",
    "quorum=8", "agree=4of5,quorum=8", "agree=4of5,quorum=11", "agree=5of7,quorum=10",
    "agree=4,quorum=10",
)


def sweep_policies() -> list[str]:
    """The presets, then the nearby rules."""
    return list(PRESETS) + [r for r in NEARBY_RULES if r not in PRESETS.values()]


@dataclass(frozen=True)
class Score:
    """Expected outcome of a setting over one or more runs (draws)."""

    label: str
    problems: int
    correct: float  # mean number right per run
    correct_se: float | None  # its standard error over draws (None: one run)
    no_answer: float
    mean_s: float  # per problem
    total_s: float  # per run
    tokens: float  # per run
    stopped_early: float
    cut_answers: float

    @property
    def accuracy(self) -> float:
        return self.correct / self.problems if self.problems else 0.0


def score_runs(label: str, runs: Sequence[RunOutcome]) -> Score:
    """Means over runs; the standard error is over the runs' numbers right."""
    if not runs:
        raise DataError("no runs to score")
    per_run = [float(r.num_correct) for r in runs]
    problems = len(runs[0].problems)
    se = statistics.stdev(per_run) / math.sqrt(len(runs)) if len(runs) > 1 else None

    def mean(values: Sequence[float]) -> float:
        return sum(values) / len(values)

    total = mean([r.total_s for r in runs])
    return Score(
        label, problems, mean(per_run), se,
        mean([sum(p.answer is None for p in r.problems) for r in runs]),
        total / problems if problems else 0.0, total,
        mean([r.total_tokens for r in runs]),
        mean([sum(stopped_early(p.stop_reason) for p in r.problems) for r in runs]),
        mean([sum(p.cut_answers for p in r.problems) for r in runs]),
    )


def recorded_score(records: Sequence[ProblemRecord], genselect: bool = True) -> Score:
    """The recorded run, on the same scale as the simulated ones; ``genselect=False``: as if
    GenSelect had been off (the ordinary rule's recorded choices, less the time it took)."""
    if genselect:
        label, right = "recorded", sum(bool(r.correct) for r in records)
        total = sum(r.used_s for r in records)
    else:
        label, right = "recorded, GenSelect off", sum(bool(r.ordinary_correct) for r in records)
        total = sum(r.used_s - r.genselect_s for r in records)
    n = len(records)
    return Score(label, n, float(right), None,
                 float(sum(r.answer is None for r in records)), total / n if n else 0.0, total,
                 float(sum(r.total_tokens for r in records)),
                 float(sum(r.stopped_early for r in records)), 0.0)


def rescore_records(records: Sequence[ProblemRecord], policy: str, num_streams: int | None,
                    budget: BudgetConfig | None, wind_down_s: float, max_tokens: int,
                    tok_s_scale: float = 1.0, selection: SelectSettings | None = None,
                    confidence_stop: ConfidenceStop | None = None) -> RunOutcome:
    """A recorded run re-scored under ``policy`` (and a selection rule, an online confidence
    stop), in the order it was served."""
    lengths = LengthModel.from_records(records, max_tokens)
    problems = [problem_from_record(r, lengths, num_streams, tok_s_scale)
                for r in sorted(records, key=lambda r: r.order)]
    return simulate_run(problems, parse_policy(policy), budget, wind_down_s, selection,
                        confidence_stop)


def sample_sweep(groups: dict[str, list[SampledProblem]], policies: Sequence[str],
                 num_streams: int, tok_s: float, budget: BudgetConfig | None, draws: int,
                 seed: int = 0, per_problem_s: float | None = None,
                 wind_down_s: float = 0.0) -> list[Score]:
    """Per policy: ``draws`` runs of every model's problems (same draws for every policy);
    ``budget=None``: no deadlines."""
    scores = []
    for policy in policies:
        rule = parse_policy(policy)
        runs = []
        for d in range(draws):
            outcomes: list[SimOutcome] = []
            for model, problems in sorted(groups.items()):
                rng = random.Random(f"{seed}:{model}:{d}")
                run_budget = None if budget is None else \
                    scaled_budget(budget, len(problems), per_problem_s)
                drawn = draw_run(problems, num_streams, tok_s, rng)
                outcomes += simulate_run(drawn, rule, run_budget, wind_down_s).problems
            runs.append(RunOutcome(tuple(outcomes)))
        scores.append(score_runs(policy, runs))
    return scores


def print_scores(scores: Sequence[Score], title: str) -> None:
    """The comparison table: one row per setting."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for column in ("setting", "right", "accuracy", "no answer", "s/problem", "total s",
                   "tokens", "stopped early", "answers cut"):
        table.add_column(column, justify="left" if column == "setting" else "right")
    for s in scores:
        right = f"{s.correct:.2f}" + ("" if s.correct_se is None else f" ±{s.correct_se:.2f}")
        table.add_row(s.label, f"{right} / {s.problems}", f"{100 * s.accuracy:.1f}%",
                      f"{s.no_answer:.1f}", f"{s.mean_s:.1f}", f"{s.total_s:.0f}",
                      f"{s.tokens:.0f}", f"{s.stopped_early:.1f}", f"{s.cut_answers:.1f}")
    Console(width=140).print(table)


def add_simulate_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """``aimo-infer simulate RUN_DIR|TRACES``."""
    p = sub.add_parser(
        "simulate", help="re-score recorded streams under other policies, n, budgets, speeds",
        description="Replay the recorded answers and arrival times of a dry run (or of the "
        "per-sample traces in data/traces/) through the controller's stop policies, vote and "
        "time budget, without a model, and print the expected score and time beside the "
        "recorded run.",
    )
    p.add_argument("source", help="a dry-run directory, or a per-sample trace file or folder")
    p.add_argument("--policy", action="append", metavar="SPEC",
                   help="stop policy (preset or rules); repeat to compare several "
                   "(default: the recorded one; nemo for traces)")
    p.add_argument("--sweep", action="store_true",
                   help="also every preset and nearby rules, as one table")
    p.add_argument("--streams", type=int, metavar="N", help="streams per problem (run dir: the "
                   "first N recorded seeds, default the recorded count; traces: N drawn "
                   "samples, default 12)")
    p.add_argument("--base-s", type=float, metavar="S", help="per-problem base time")
    p.add_argument("--max-extra-s", type=float, metavar="S", help="cap on the buffer draw")
    p.add_argument("--per-problem-s", type=float, metavar="S",
                   help="time share per problem (limit = S x problems)")
    p.add_argument("--no-budget", action="store_true",
                   help="no time budget: no deadlines, every stream runs to its end")
    p.add_argument("--no-genselect", action="store_true",
                   help="run dir: add the recorded run as if GenSelect had been off (its "
                   "ordinary choices and time are recorded); simulated rows never use it")
    p.add_argument("--tok-s-scale", type=float, default=1.0, metavar="X",
                   help="run dir: engine X times faster (0.5: half as fast)")
    p.add_argument("--tok-s", type=float, default=100.0, metavar="R",
                   help="traces: tokens/s per stream (default 100)")
    p.add_argument("--draws", type=int, default=100, metavar="D",
                   help="traces: simulated runs per setting (default 100)")
    p.add_argument("--seed", type=int, default=0, help="traces: seed of the draws")
    p.add_argument("--model", action="append", metavar="NAME",
                   help="traces: only these models (repeatable)")
    p.add_argument("--select", action="append", metavar="RULE",
                   help=f"run dir: answer selection ({', '.join(SELECT_RULES)}, or all); "
                   "repeat to compare (default: the recorded one); needs recorded logprobs")
    p.add_argument("--confidence-stop", choices=CONFIDENCE_STOPS, metavar="RULE",
                   help="run dir: replay the online confidence stop: none or deepconf "
                   "(default: the recorded setting)")
    p.add_argument("--stop-threshold", type=float, metavar="C",
                   help="deepconf stop: fixed window-confidence threshold")
    p.add_argument("--stop-percentile", type=float, metavar="P",
                   help="deepconf stop: percentile of the warmup streams' lowest groups")
    p.add_argument("--stop-warmup", type=int, metavar="N", help="deepconf stop: warmup streams")
    p.set_defaults(func=cmd_simulate)


def _budget_from(base: BudgetConfig, args: argparse.Namespace) -> BudgetConfig:
    changes = {k: v for k, v in (("base_s", args.base_s), ("max_extra_s", args.max_extra_s))
               if v is not None}
    return dataclasses.replace(base, **changes)


def check_flags(args: argparse.Namespace) -> None:
    """The numeric flags, by the config's rules where they set a config value."""
    for flag, key, value in (("--streams", "solve.num_streams", args.streams),
                             ("--base-s", "budget.base_s", args.base_s),
                             ("--max-extra-s", "budget.max_extra_s", args.max_extra_s),
                             ("--per-problem-s", "budget.total_s", args.per_problem_s)):
        if value is not None:
            check_setting(key, value, flag)
    for flag, value in (("--tok-s-scale", args.tok_s_scale), ("--tok-s", args.tok_s)):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be finite and > 0, got {value!r}")
    if args.draws < 1:
        raise ConfigError(f"--draws must be >= 1, got {args.draws}")


def _policies(args: argparse.Namespace, default: str) -> list[str]:
    policies = list(args.policy or [default])
    if args.sweep:
        policies += [p for p in sweep_policies() if p not in policies]
    for policy in policies:
        parse_policy(policy)  # a bad spec fails before any work
    return policies


def cmd_simulate(args: argparse.Namespace) -> int:
    source = Path(args.source)
    if not source.exists():
        raise MissingFile(f"not found: {source}")
    check_flags(args)
    if is_sample_trace(source):
        if args.select or args.confidence_stop:
            raise ValueError("--select and --confidence-stop replay recorded confidence: "
                             "give a dry-run directory")
        return _simulate_samples(source, args)
    return _simulate_run_dir(source, args)


def _simulate_run_dir(run_dir: Path, args: argparse.Namespace) -> int:
    records = read_results(run_dir)
    if not records:
        raise DataError(f"{run_dir}: no finished problems to simulate")
    config = read_run_config(run_dir).get("config", {})
    solve = config.get("solve", {})
    budget_cfg = (dataclass_from_table(BudgetConfig, config["budget"], "config.budget",
                                       ValueError, ignore_unknown=True)
                  if "budget" in config else BudgetConfig())
    budget: BudgetConfig | None = _budget_from(budget_cfg, args)
    if args.per_problem_s is not None:
        budget = scaled_budget(budget, len(records), args.per_problem_s)
    if args.no_budget:
        budget = None
    wind_down = float(config.get("submission", {}).get("wind_down_s",
                                                       SubmissionConfig().wind_down_s))
    max_tokens = int(solve.get("sampling", {}).get("max_tokens", 4096))
    selections, stop = _confidence_settings(solve, args)
    needs = stop is not None or any(s.rule != "majority" for s in selections)
    if needs and not any(s.confidence for r in records for s in r.streams):
        raise DataError(f"{run_dir}: no stream recorded its confidence; run the dry run with "
                         "--logprobs 5 to compare selection rules or confidence stops")
    scores = [recorded_score(records)]
    if args.no_genselect:
        scores.append(recorded_score(records, genselect=False))
    for policy in _policies(args, solve.get("stop_policy", "nemo")):
        for selection in selections:
            outcome = rescore_records(records, policy, args.streams, budget, wind_down,
                                      max_tokens, args.tok_s_scale, selection, stop)
            label = policy if len(selections) == 1 and not args.select else (
                f"{policy} | select {selection.rule}")
            scores.append(score_runs(label + ("" if stop is None else " | conf-stop"),
                                     [outcome]))
    n = args.streams or solve.get("num_streams")
    print_scores(scores, f"{run_dir}: {len(records)} problems, {n} streams, tok/s x"
                 f"{args.tok_s_scale:g}" + ("" if budget is None else
                                            f", base {budget.base_s:g} s + up to "
                                            f"{budget.max_extra_s:g} s"))
    return 0


def _confidence_settings(
    solve: dict[str, Any], args: argparse.Namespace
) -> tuple[list[SelectSettings], ConfidenceStop | None]:
    """Selection rules and the online stop to replay: the flags over the recorded config."""
    recorded = solve.get("confidence", {})
    rules = list(args.select or [solve.get("select", "majority")])
    if "all" in rules:
        rules = list(SELECT_RULES)
    floor = float(recorded.get("entropy_floor", 0.01))
    eta = float(recorded.get("deepconf_eta", 90.0))
    selections = [SelectSettings(rule, floor, eta) for rule in dict.fromkeys(rules)]
    kind = args.confidence_stop or recorded.get("stop", "none")
    if kind == "none":
        if any(v is not None for v in (args.stop_threshold, args.stop_percentile,
                                       args.stop_warmup)):  # fmt: skip
            raise ValueError("--stop-threshold/--stop-percentile/--stop-warmup need "
                             "--confidence-stop deepconf")
        return selections, None
    threshold = args.stop_threshold
    if threshold is None and args.stop_percentile is None:
        threshold = recorded.get("stop_threshold")
    percentile = args.stop_percentile
    if percentile is None:
        percentile = float(recorded.get("stop_percentile", 10.0))
    warmup = args.stop_warmup if args.stop_warmup is not None else int(
        recorded.get("stop_warmup", 4))
    return selections, ConfidenceStop(threshold, warmup, percentile)


def _simulate_samples(path: Path, args: argparse.Namespace) -> int:
    try:
        groups = group_by_model(load_sampled_problems(path))
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    if not groups:
        raise DataError(f"{path}: no per-sample trace records to simulate")
    if args.model:
        unknown = [m for m in args.model if m not in groups]
        if unknown:
            raise DataError(f"no model {unknown[0]!r} in {path}; models: "
                             f"{', '.join(sorted(groups))}")
        groups = {m: groups[m] for m in args.model}
    budget = None if args.no_budget else _budget_from(BudgetConfig(), args)
    scores = sample_sweep(groups, _policies(args, "nemo"), args.streams or 12, args.tok_s,
                          budget, args.draws, args.seed, args.per_problem_s,
                          SubmissionConfig().wind_down_s)
    print_scores(scores, f"{path}: {len(groups)} model(s), {args.streams or 12} streams, "
                 f"{args.tok_s:g} tok/s per stream, {args.draws} draws")
    return 0
