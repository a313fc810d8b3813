"""Time budget of a submission: one rule per preset, as pure functions, and the wind-down.

A run has ``total_s`` (5 h on Kaggle) for ``num_problems`` problems served one at a time in an
unknown order; start-up (install, model load) counts, and ``safety_margin_s`` is kept back.
Each rule sees only the time left and the problems left (this one included), so no rule can
plan more time than is left:

- ``nemo`` (the winning AIMO-2 entry): ``base_s`` (350 s) per problem plus a draw of at most
  ``max_extra_s`` (210 s) from a bank of time earlier problems left unused. When the time left
  cannot give every remaining problem its base, the base is scaled down to the fair share, so a
  shortfall is spread evenly instead of landing on the last problems.
- ``aimo3`` (the public AIMO-3 rule): ``clamp(time_left - (problems_left - 1) x base_s, base_s,
  high_s)`` with 300 s / 900 s; when even the base no longer fits, the fair share.

``wind_down`` is the one rule for where the solve and the answer end inside an allotment,
shared by ``predict`` and the dry run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from aimo_infer.config import BudgetConfig, ConfigError

PRESETS: dict[str, BudgetConfig] = {
    "nemo": BudgetConfig(preset="nemo", base_s=350.0, max_extra_s=210.0),
    "aimo3": BudgetConfig(preset="aimo3", base_s=300.0, max_extra_s=0.0, high_s=900.0),
}
WIND_DOWN_SHARE = 0.25  # at most this share of an allotment goes to winding down


@dataclass(frozen=True)
class Allotment:
    """The time one problem may take."""

    index: int  # 0-based problem number in serving order
    base_s: float  # the per-problem base the rule aimed for (nemo: after scaling down)
    extra_s: float  # above the base (nemo: drawn from the bank)
    seconds: float  # time granted
    deadline: float  # clock time at which the problem must end


@dataclass(frozen=True)
class Window:
    """Inside an allotment of ``seconds``: when the solve stops, when the answer must be back."""

    solve_s: float
    answer_s: float


def nemo_allotment(time_left_s: float, problems_left: int, bank_s: float, base_s: float,
                   max_extra_s: float) -> tuple[float, float]:
    """(base, extra) for the next problem: the base, scaled down to the fair share when the
    time left cannot give every remaining problem its base, plus a capped draw from the bank
    out of the time beyond every remaining problem's base."""
    time_left_s, problems_left = max(0.0, time_left_s), max(1, problems_left)
    base = min(base_s, time_left_s / problems_left)
    spare = time_left_s - problems_left * base
    extra = max(0.0, min(max_extra_s, bank_s, spare))
    return base, extra


def aimo3_allotment(time_left_s: float, problems_left: int, base_s: float,
                    high_s: float) -> float:
    """``clamp(time_left - (problems_left - 1) x base, base, high)``; the fair share when the
    time left cannot give every remaining problem the base."""
    time_left_s, problems_left = max(0.0, time_left_s), max(1, problems_left)
    if time_left_s < problems_left * base_s:
        return time_left_s / problems_left
    return min(high_s, max(base_s, time_left_s - (problems_left - 1) * base_s))


def wind_down(seconds: float, wind_down_s: float, return_margin_s: float) -> Window:
    """The solve ends ``wind_down_s`` before the allotment does and the answer is due
    ``return_margin_s`` before it, each at most a quarter of a short allotment."""
    seconds = max(0.0, seconds)
    solve = seconds - min(wind_down_s, WIND_DOWN_SHARE * seconds)
    answer = max(solve, seconds - min(return_margin_s, WIND_DOWN_SHARE * seconds))
    return Window(solve, answer)


def check_budget_config(config: BudgetConfig) -> None:
    """Reject settings under which the guarantees cannot hold; the message names the key."""
    checks = [
        (config.preset in PRESETS, f"budget.preset must be one of {sorted(PRESETS)}, "
         f"got {config.preset!r}"),
        (config.base_s > 0, "budget.base_s must be > 0"),
        (config.max_extra_s >= 0, "budget.max_extra_s must be >= 0"),
        (config.high_s >= config.base_s, "budget.high_s must be >= budget.base_s"),
        (config.total_s > 0, "budget.total_s must be > 0"),
        (config.safety_margin_s >= 0, "budget.safety_margin_s must be >= 0"),
        (config.min_per_problem_s >= 0, "budget.min_per_problem_s must be >= 0"),
        (config.min_per_problem_s <= config.base_s,
         "budget.min_per_problem_s must be <= budget.base_s"),
        (config.num_problems >= 1, "budget.num_problems must be >= 1"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def preset_config(name: str, **overrides: float | int) -> BudgetConfig:
    """The settings of preset ``name`` (with ``overrides``, e.g. ``num_problems``)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown budget preset {name!r}; choose from {sorted(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)  # type: ignore[arg-type]


class TimeBudget:
    """Hands out allotments problem by problem on the caller's clock (pure otherwise).

    The bank (nemo) holds base time earlier problems did not use, less what later problems drew
    beyond their base; it never goes below zero.
    """

    def __init__(self, config: BudgetConfig, start: float, num_problems: int | None = None,
                 elapsed_before_s: float = 0.0) -> None:
        check_budget_config(config)
        if num_problems is not None and num_problems < 1:
            raise ConfigError(f"num_problems must be >= 1, got {num_problems}")
        if elapsed_before_s < 0:
            raise ConfigError(f"elapsed_before_s must be >= 0, got {elapsed_before_s}")
        self.config = config
        self.num_problems = config.num_problems if num_problems is None else num_problems
        self._end = start + config.total_s - elapsed_before_s - config.safety_margin_s
        self._served = 0
        self._bank = 0.0
        self._settled: set[int] = set()

    @property
    def end(self) -> float:
        """Clock time by which the whole run must have ended."""
        return self._end

    @property
    def bank_s(self) -> float:
        """Unused time available to later problems (before the per-problem cap)."""
        return self._bank

    @property
    def problems_left(self) -> int:
        """Problems not yet allotted (0 once more problems were served than expected)."""
        return max(0, self.num_problems - self._served)

    def time_left(self, now: float) -> float:
        """Seconds until the run must end (never negative)."""
        return max(0.0, self._end - now)

    def reserved_s(self, after_this: bool = True) -> float:
        """``min_per_problem_s`` for each problem still to come (after the next one, by
        default): what a wait before the first problem may not eat into."""
        count = self.problems_left - (1 if after_this else 0)
        return self.config.min_per_problem_s * max(0, count)

    def allot(self, now: float) -> Allotment:
        """The time the next problem may take, starting at clock time ``now``."""
        cfg = self.config
        left = self.time_left(now)
        count = max(1, self.problems_left)  # more problems than expected: this one gets all
        if cfg.preset == "aimo3":
            seconds = aimo3_allotment(left, count, cfg.base_s, cfg.high_s)
            base, extra = min(cfg.base_s, seconds), max(0.0, seconds - cfg.base_s)
        else:
            base, extra = nemo_allotment(left, count, self._bank, cfg.base_s, cfg.max_extra_s)
            seconds = base + extra
        allotment = Allotment(self._served, base, extra, seconds, now + seconds)
        self._served += 1
        return allotment

    def settle(self, allotment: Allotment, used_s: float) -> None:
        """Record what a problem used: its unused time goes to the bank, its draw comes out."""
        if used_s < 0:
            raise ValueError(f"used_s must be >= 0, got {used_s}")
        if allotment.index in self._settled or allotment.index >= self._served:
            raise ValueError(f"allotment {allotment.index} was not handed out or is settled")
        self._settled.add(allotment.index)
        self._bank = max(0.0, self._bank - allotment.extra_s + allotment.seconds - used_s)
