"""The time budget as a dry run (and the simulator) applies it: scaled to the subset, with the
submission's wind-down before each deadline."""

from __future__ import annotations

import dataclasses

from aimo_infer.config import BudgetConfig, ConfigError
from aimo_infer.kaggle.budget import wind_down


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
