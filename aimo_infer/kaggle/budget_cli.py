"""``aimo-infer budget``: the allotments a time-budget preset gives in a scenario.

Serves ``--problems`` problems on a virtual clock after ``--startup-s`` of start-up, each using
its whole allotment (``full``), half of it, or the times a trace recorded, and prints one line
per problem and a summary line
``min_allotted_s=... max_allotted_s=... planned_total_s=... limit_s=...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from aimo_infer.config import BudgetConfig, ConfigError, load_config
from aimo_infer.errors import MissingFile
from aimo_infer.kaggle.budget import PRESETS, TimeBudget, preset_config

USED_HELP = "full (default), half, or 'trace FILE' (JSONL: elapsed_s of predict events, or used_s)"


@dataclass(frozen=True)
class Planned:
    """One problem of a scenario."""

    index: int
    time_left_s: float
    allotted_s: float
    used_s: float


def trace_times(path: str | Path) -> list[float]:
    """Seconds each problem used, in serving order, from a predict trace or dry-run results."""
    p = Path(path)
    if not p.is_file():
        raise MissingFile(f"trace not found: {p}")
    times: list[float] = []
    for number, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except json.JSONDecodeError:
            raise ConfigError(f"{p}:{number}: not JSON") from None
        if not isinstance(event, dict):
            continue
        value = event.get("elapsed_s") if event.get("event") == "predict" else event.get("used_s")
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigError(f"{p}:{number}: time {value!r} is not a number >= 0")
        times.append(float(value))
    if not times:
        raise ConfigError(f"{p}: no predict events with elapsed_s (nor records with used_s)")
    return times


def plan(config: BudgetConfig, problems: int, startup_s: float, used: str,
         times: list[float] | None = None) -> list[Planned]:
    """Serve ``problems`` problems on a virtual clock; ``used``: full, half or trace."""
    if problems < 1:
        raise ConfigError("--problems must be >= 1")
    if startup_s < 0:
        raise ConfigError("--startup-s must be >= 0")
    budget = TimeBudget(config, start=0.0, num_problems=problems, elapsed_before_s=startup_s)
    now, rows = 0.0, []
    for index in range(problems):
        left = budget.time_left(now)
        allotment = budget.allot(now)
        if used == "half":
            spent = allotment.seconds / 2
        elif used == "trace" and times is not None and index < len(times):
            spent = min(times[index], allotment.seconds)  # predict returns by its deadline
        else:
            spent = allotment.seconds
        budget.settle(allotment, spent)
        now += spent
        rows.append(Planned(index, left, allotment.seconds, spent))
    return rows


def summary_line(rows: list[Planned], limit_s: float) -> str:
    allotted = [r.allotted_s for r in rows]
    return (f"min_allotted_s={min(allotted):.1f} max_allotted_s={max(allotted):.1f} "
            f"planned_total_s={sum(allotted):.1f} limit_s={limit_s:.1f}")


def add_budget_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "budget", help="print the per-problem time allotments of a budget preset",
        description="Run a time-budget preset over a scenario on a virtual clock: start-up "
        "first (it counts against the run), then every problem in turn, each using its whole "
        "allotment, half of it, or the time a trace recorded. Prints one line per problem and "
        "ends with min_allotted_s, max_allotted_s, planned_total_s and limit_s (the run's time "
        "less the safety margin and the start-up).",
        epilog="Example: aimo-infer budget --preset aimo3 --problems 50 --startup-s 900",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="nemo",
                   help="nemo (350 s + bank draw <= 210 s) or aimo3 (clamp, 300-900 s)")
    p.add_argument("--problems", type=int, default=50, metavar="N", help="problems (50)")
    p.add_argument("--startup-s", type=float, default=0.0, metavar="S",
                   help="start-up time before the first problem (install, model load)")
    p.add_argument("--used", nargs="+", default=["full"], metavar="HOW", help=USED_HELP)
    p.add_argument("--config", metavar="FILE",
                   help="take total_s and safety_margin_s from this config's [budget]")
    p.set_defaults(func=_cmd_budget)


def _cmd_budget(args: argparse.Namespace) -> int:
    used, times = args.used[0], None
    if used not in ("full", "half", "trace") or (used == "trace") != (len(args.used) == 2) \
            or len(args.used) > 2:
        raise ConfigError(f"--used takes full, half or 'trace FILE', not {' '.join(args.used)!r}")
    if used == "trace":
        times = trace_times(args.used[1])
    config = preset_config(args.preset, num_problems=max(1, args.problems))
    if args.config:
        own = load_config(args.config).budget
        config = dataclasses.replace(config, total_s=own.total_s,
                                     safety_margin_s=own.safety_margin_s)
    rows = plan(config, args.problems, args.startup_s, used, times)
    print(f"preset {args.preset}: {args.problems} problems, start-up {args.startup_s:.0f}s, "
          f"used {used}; run {config.total_s:.0f}s, safety margin {config.safety_margin_s:.0f}s")
    print(f"{'problem':>7} {'time_left_s':>11} {'allotted_s':>10} {'used_s':>8}")
    for r in rows:
        print(f"{r.index + 1:>7} {r.time_left_s:>11.1f} {r.allotted_s:>10.1f} {r.used_s:>8.1f}")
    limit = config.total_s - config.safety_margin_s - args.startup_s
    print(summary_line(rows, limit))
    return 0
