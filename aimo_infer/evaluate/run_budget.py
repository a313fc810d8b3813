"""The time budget as a dry run (and the simulator) applies it: scaled to the subset, with the
submission's own wind-down rule, charged on a clock that stops between problems."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

from aimo_infer.config import BudgetConfig, ConfigError
from aimo_infer.kaggle.budget import TimeBudget, wind_down


def scaled_budget(budget: BudgetConfig, num_problems: int, per_problem_s: float | None = None,
                  total_s: float | None = None) -> BudgetConfig:
    """The budget for ``num_problems``: ``total_s``, or a per-problem share times the count
    (default share: the config's ``total_s / num_problems``, 5 h / 50 = 360 s). The safety
    margin shrinks in proportion (at most half the total)."""
    if num_problems < 1:
        raise ConfigError("no problems to run")
    share = budget.total_s / budget.num_problems if per_problem_s is None else per_problem_s
    total = share * num_problems if total_s is None else total_s
    if total <= 0:
        raise ConfigError("the time limit must be > 0")
    margin = budget.safety_margin_s * num_problems / budget.num_problems
    return dataclasses.replace(budget, total_s=total, num_problems=num_problems,
                               safety_margin_s=min(margin, 0.5 * total))


def solve_window(allotted_s: float, wind_down_s: float) -> float:
    """The controller's deadline within an allotment: the submission's own wind-down rule
    (``aimo_infer.kaggle.budget.wind_down``), so a dry run stops where ``predict`` would."""
    return wind_down(allotted_s, wind_down_s, 0.0).solve_s


def replay_budget(budget: TimeBudget, used_s: Sequence[float], now: float) -> float:
    """Replay problems already run (their charged times, in order) onto ``budget`` from clock
    time ``now``; the seconds they took, by which a resumed run's clock moves on."""
    at = now
    for used in used_s:
        budget.settle(budget.allot(at), used)
        at += used
    return at - now


class Stopwatch:
    """A clock that runs only between ``resume`` and ``pause``: a dry run charges its budget
    for serving problems, not for loading the engine or grading. Starts paused."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._paused_at: float | None = clock()
        self._offset = self._paused_at

    def __call__(self) -> float:
        at = self._paused_at if self._paused_at is not None else self._clock()
        return at - self._offset

    def resume(self) -> None:
        if self._paused_at is not None:
            self._offset += self._clock() - self._paused_at
            self._paused_at = None

    def pause(self) -> None:
        if self._paused_at is None:
            self._paused_at = self._clock()

    def advance(self, seconds: float) -> None:
        """Move the reading on by ``seconds`` (time charged before this process)."""
        self._offset -= seconds
