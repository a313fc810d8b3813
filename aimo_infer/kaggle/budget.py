"""Time budget of a submission: per-problem base, shared bank, capped draw, global guard.

A run has ``total_s`` (5 h on Kaggle) for ``num_problems`` problems served one at a time in an
unknown order. Each problem gets ``base_s`` plus a draw from the bank of time earlier problems
left unused, capped at ``max_extra_s`` (350 s + 210 s = 560 s at most, the winning AIMO-2
entry's settings). A global guard then makes sure the run ends before
``total_s - elapsed_before_s - safety_margin_s`` while keeping ``min_per_problem_s`` for every
problem still to come. Pure and deterministic: the caller passes clock times.
"""

from __future__ import annotations

from dataclasses import dataclass

from aimo_infer.config import BudgetConfig, ConfigError

WIND_DOWN_SHARE = 0.25  # at most this share of an allotment goes to winding down


@dataclass(frozen=True)
class Allotment:
    """The time one problem may take."""

    index: int  # 0-based problem number in serving order
    base_s: float  # the per-problem base
    extra_s: float  # drawn from the shared bank (<= max_extra_s), after the global guard
    seconds: float  # time granted after the global guard
    deadline: float  # clock time at which the problem must end


@dataclass(frozen=True)
class Window:
    """Inside an allotment of ``seconds``: when the solve stops, when the answer must be back."""

    solve_s: float
    answer_s: float


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
        (config.base_s > 0, "budget.base_s must be > 0"),
        (config.max_extra_s >= 0, "budget.max_extra_s must be >= 0"),
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


class TimeBudget:
    """Hands out allotments problem by problem and banks the time they leave unused.

    The bank holds base time earlier problems did not use, less what later problems drew
    beyond their base. It never goes below zero: an overrun is absorbed by the global guard,
    which works on the clock, not on the bank.
    """

    def __init__(
        self,
        config: BudgetConfig,
        start: float,
        num_problems: int | None = None,
        elapsed_before_s: float = 0.0,
    ) -> None:
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
        """Time kept for the problems still to come (after the next one, by default)."""
        count = self.problems_left - (1 if after_this else 0)
        return self.config.min_per_problem_s * max(0, count)

    def allot(self, now: float) -> Allotment:
        """The time the next problem may take, starting at clock time ``now``."""
        cfg = self.config
        time_left = self.time_left(now)
        wanted_extra = min(cfg.max_extra_s, self._bank)
        under_guard = time_left - self.reserved_s()
        # Behind schedule, a problem still gets the minimum as long as the run has time left.
        seconds = min(cfg.base_s + wanted_extra,
                      max(under_guard, min(cfg.min_per_problem_s, time_left)))
        seconds = max(0.0, seconds)
        extra = max(0.0, min(wanted_extra, seconds - cfg.base_s))
        allotment = Allotment(self._served, cfg.base_s, extra, seconds, now + seconds)
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
