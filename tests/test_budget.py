"""Time budget: the shared bank, the per-problem cap, and the global guard."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimo_infer.config import BudgetConfig, ConfigError
from aimo_infer.kaggle.budget import TimeBudget

KAGGLE = BudgetConfig()  # 350 s base, 210 s cap, 5 h, 600 s margin, 30 s minimum, 50 problems


def test_first_problem_gets_the_base_and_nothing_from_an_empty_bank() -> None:
    budget = TimeBudget(KAGGLE, start=1000.0)
    a = budget.allot(1000.0)
    assert (a.index, a.base_s, a.extra_s, a.seconds) == (0, 350.0, 0.0, 350.0)
    assert a.deadline == 1350.0
    assert budget.problems_left == 49


def test_unused_time_goes_to_the_bank_and_draws_come_out_of_it() -> None:
    budget = TimeBudget(KAGGLE, start=0.0)
    now = 0.0
    a = budget.allot(now)
    budget.settle(a, 100.0)  # 250 s unused
    now += 100.0
    assert budget.bank_s == 250.0
    b = budget.allot(now)
    assert (b.extra_s, b.seconds) == (210.0, 560.0)  # capped draw
    budget.settle(b, 500.0)  # used 150 s of the 210 s drawn
    now += 500.0
    assert budget.bank_s == pytest.approx(250.0 - 150.0)
    c = budget.allot(now)
    assert (c.extra_s, c.seconds) == (100.0, 450.0)
    budget.settle(c, 450.0)
    assert budget.bank_s == 0.0


def test_the_draw_is_capped_at_max_extra_even_with_a_large_bank() -> None:
    budget = TimeBudget(KAGGLE, start=0.0)
    now = 0.0
    for _ in range(5):  # five instant problems bank 5 x 350 s
        budget.settle(budget.allot(now), 0.0)
    assert budget.bank_s == 1750.0
    a = budget.allot(now)
    assert a.extra_s == KAGGLE.max_extra_s == 210.0
    assert a.seconds == 560.0


def test_an_overrun_empties_the_bank_but_never_below_zero() -> None:
    budget = TimeBudget(KAGGLE, start=0.0)
    budget.settle(budget.allot(0.0), 300.0)
    assert budget.bank_s == 50.0
    budget.settle(budget.allot(300.0), 1000.0)  # 400 s over its 400 s allotment
    assert budget.bank_s == 0.0


def test_the_guard_keeps_the_minimum_for_every_problem_still_to_come() -> None:
    cfg = BudgetConfig(base_s=350, max_extra_s=210, total_s=3600, safety_margin_s=100,
                       min_per_problem_s=30, num_problems=50)
    budget = TimeBudget(cfg, start=0.0, elapsed_before_s=200.0)
    assert budget.end == 3300.0
    a = budget.allot(0.0)  # 3300 s left, 49 x 30 s reserved -> at most 1830 s: the base fits
    assert a.seconds == 350.0
    late = budget.allot(2000.0)  # 1300 s left, 48 x 30 = 1440 s reserved: behind schedule
    assert late.seconds == 30.0


def test_elapsed_before_and_margin_shorten_the_run() -> None:
    cfg = BudgetConfig(base_s=100, max_extra_s=0, total_s=1000, safety_margin_s=50,
                       min_per_problem_s=10, num_problems=3)
    budget = TimeBudget(cfg, start=10.0, elapsed_before_s=800.0)
    assert budget.end == 10.0 + 1000 - 800 - 50
    a = budget.allot(10.0)  # 150 s left, 2 x 10 s reserved
    assert a.seconds == 100.0
    b = budget.allot(110.0)  # 50 s left, 10 s reserved
    assert b.seconds == 40.0
    c = budget.allot(150.0)
    assert c.seconds == 10.0
    assert budget.allot(170.0).seconds == 0.0  # past the end: nothing, and no negative time


def test_more_problems_than_expected_get_what_is_left_without_reservation() -> None:
    cfg = BudgetConfig(base_s=100, max_extra_s=0, total_s=1000, safety_margin_s=0,
                       min_per_problem_s=10, num_problems=1)
    budget = TimeBudget(cfg, start=0.0)
    budget.settle(budget.allot(0.0), 100.0)
    assert budget.problems_left == 0
    assert budget.allot(950.0).seconds == 50.0


@pytest.mark.parametrize("change", [
    {"base_s": 0}, {"max_extra_s": -1}, {"total_s": 0}, {"safety_margin_s": -1},
    {"min_per_problem_s": 400}, {"num_problems": 0},
])
def test_bad_settings_are_rejected(change: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        TimeBudget(BudgetConfig(**change), start=0.0)  # type: ignore[arg-type]


def test_settling_twice_or_an_unknown_allotment_is_an_error() -> None:
    budget = TimeBudget(KAGGLE, start=0.0)
    a = budget.allot(0.0)
    budget.settle(a, 1.0)
    with pytest.raises(ValueError):
        budget.settle(a, 1.0)
    with pytest.raises(ValueError):
        budget.settle(a, -1.0)


def _simulate(cfg: BudgetConfig, fractions: list[float], gaps: list[float],
              elapsed_before_s: float) -> None:
    """Serve every problem, using a fraction of its allotment, and check each guarantee."""
    start = 0.0
    budget = TimeBudget(cfg, start, elapsed_before_s=elapsed_before_s)
    limit = start + cfg.total_s - elapsed_before_s - cfg.safety_margin_s
    now = start
    for fraction, gap in zip(fractions, gaps, strict=True):
        now += gap  # time outside any problem (the gateway's own work)
        bank_before = budget.bank_s
        a = budget.allot(now)
        time_left = max(0.0, limit - now)
        assert 0.0 <= a.extra_s <= min(cfg.max_extra_s, bank_before) + 1e-9
        assert a.seconds <= cfg.base_s + a.extra_s + 1e-9
        assert a.deadline <= limit + 1e-9 or a.seconds == 0.0
        # No problem gets less than the reserved minimum while time remains.
        assert a.seconds >= min(cfg.min_per_problem_s, time_left) - 1e-9
        used = fraction * a.seconds  # a solve ends by its deadline
        budget.settle(a, used)
        started, now = now, now + used
        assert budget.bank_s >= 0.0
        # A problem never runs past the limit (one that starts past it gets no time at all).
        assert now <= max(limit, started) + 1e-6
    if not any(gaps):
        assert now <= limit + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    fractions=st.lists(st.floats(0.0, 1.0), min_size=50, max_size=50),
    elapsed_before_s=st.floats(0.0, 900.0),
)
def test_fifty_problems_never_exceed_the_limit(fractions: list[float],
                                               elapsed_before_s: float) -> None:
    _simulate(KAGGLE, fractions, [0.0] * 50, elapsed_before_s)


@settings(max_examples=100, deadline=None)
@given(
    fractions=st.lists(st.floats(0.0, 1.0), min_size=50, max_size=50),
    base_s=st.floats(60.0, 900.0),
    total_s=st.floats(1500.0, 40_000.0),
)
def test_tight_runs_keep_every_problem_its_minimum(fractions: list[float], base_s: float,
                                                   total_s: float) -> None:
    """With no time outside problems, all 50 get at least the minimum whenever it fits."""
    cfg = BudgetConfig(base_s=base_s, max_extra_s=210, total_s=total_s, safety_margin_s=0,
                       min_per_problem_s=30, num_problems=50)
    budget = TimeBudget(cfg, start=0.0)
    now = 0.0
    for fraction in fractions:
        a = budget.allot(now)
        assert a.seconds >= 30.0 - 1e-9  # 50 x 30 s <= 1500 s always fits
        used = fraction * a.seconds
        budget.settle(a, used)
        now += used
    assert now <= total_s + 1e-6


@settings(max_examples=100, deadline=None)
@given(
    fractions=st.lists(st.floats(0.0, 1.0), min_size=50, max_size=50),
    gaps=st.lists(st.floats(0.0, 120.0), min_size=50, max_size=50),
)
def test_time_spent_between_problems_is_absorbed_by_the_guard(fractions: list[float],
                                                              gaps: list[float]) -> None:
    _simulate(KAGGLE, fractions, gaps, 0.0)


@settings(max_examples=100, deadline=None)
@given(used=st.lists(st.floats(0.0, 600.0), min_size=1, max_size=50))
def test_bank_equals_unused_base_minus_draws_when_the_guard_is_idle(used: list[float]) -> None:
    """Far from the end, the bank is the running sum of (base - used), floored at zero."""
    cfg = BudgetConfig(total_s=1e9)
    budget = TimeBudget(cfg, start=0.0)
    expected, now = 0.0, 0.0
    for u in used:
        a = budget.allot(now)
        spent = min(u, a.seconds)
        budget.settle(a, spent)
        now += spent
        expected = max(0.0, expected + cfg.base_s - spent)
        assert budget.bank_s == pytest.approx(expected)
