"""Time budget: the nemo and aimo3 rules, the bank, the wind-down, and ``aimo-infer budget``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimo_infer.cli import main as cli_main
from aimo_infer.config import BudgetConfig, ConfigError
from aimo_infer.kaggle.budget import (
    TimeBudget,
    aimo3_allotment,
    nemo_allotment,
    preset_config,
    wind_down,
)
from aimo_infer.kaggle.budget_cli import plan

PRESET_NAMES = ["nemo", "aimo3"]
ROOMY = BudgetConfig(num_problems=10)  # 17,400 s for 10 problems: the base always fits
EPS = 1e-6


# ----- the rules as pure functions --------------------------------------------------------


def test_nemo_gives_the_base_and_a_capped_draw_when_time_allows() -> None:
    assert nemo_allotment(10_000.0, 10, 0.0, 350.0, 210.0) == (350.0, 0.0)
    assert nemo_allotment(10_000.0, 10, 500.0, 350.0, 210.0) == (350.0, 210.0)
    assert nemo_allotment(10_000.0, 10, 100.0, 350.0, 210.0) == (350.0, 100.0)
    # the draw comes only out of time beyond every remaining problem's base
    assert nemo_allotment(3_550.0, 10, 500.0, 350.0, 210.0) == (350.0, 50.0)


def test_nemo_scales_the_base_down_to_the_fair_share() -> None:
    assert nemo_allotment(16_500.0, 50, 0.0, 350.0, 210.0) == (330.0, 0.0)
    assert nemo_allotment(16_500.0, 50, 900.0, 350.0, 210.0) == (330.0, 0.0)  # no spare
    assert nemo_allotment(0.0, 5, 100.0, 350.0, 210.0) == (0.0, 0.0)


def test_aimo3_is_the_public_clamp_and_falls_back_to_the_fair_share() -> None:
    assert aimo3_allotment(16_500.0, 50, 300.0, 900.0) == 900.0  # 1800 clamped to 900
    assert aimo3_allotment(15_600.0, 48, 300.0, 900.0) == 900.0
    assert aimo3_allotment(14_700.0, 48, 300.0, 900.0) == 600.0
    assert aimo3_allotment(15_000.0, 50, 300.0, 900.0) == 300.0
    assert aimo3_allotment(14_000.0, 50, 300.0, 900.0) == 280.0  # the base no longer fits
    assert aimo3_allotment(5_000.0, 1, 300.0, 900.0) == 900.0


def full_usage(preset: str, problems: int, startup_s: float) -> list[float]:
    config = preset_config(preset, num_problems=problems)
    return [r.allotted_s for r in plan(config, problems, startup_s, "full")]


def limit_of(preset: str, startup_s: float) -> float:
    config = PRESETS_CFG[preset]
    return config.total_s - config.safety_margin_s - startup_s


PRESETS_CFG = {name: preset_config(name) for name in PRESET_NAMES}


def test_fifty_problems_after_a_900s_start_up() -> None:
    """The issue's scenario: every problem uses its whole allotment."""
    aimo3 = full_usage("aimo3", 50, 900.0)
    assert min(aimo3) >= 300.0 and max(aimo3) == 900.0
    assert sum(aimo3) <= limit_of("aimo3", 900.0) + EPS
    nemo = full_usage("nemo", 50, 900.0)
    assert max(nemo) - min(nemo) < EPS  # 16,500 s / 50: the shortfall spread over all
    assert nemo[0] == pytest.approx(330.0)
    assert sum(nemo) <= limit_of("nemo", 900.0) + EPS


# ----- properties ---------------------------------------------------------------------------


def serve(config: BudgetConfig, fractions: list[float], startup_s: float,
          gaps: list[float] | None = None) -> tuple[list[float], float, float]:
    """Serve len(fractions) problems, each using a fraction of its allotment; check that no
    allotment plans more time than is left. Returns (allotments, clock at the end, limit)."""
    budget = TimeBudget(config, start=0.0, num_problems=len(fractions),
                        elapsed_before_s=startup_s)
    limit = config.total_s - config.safety_margin_s - startup_s
    now, allotted = 0.0, []
    for index, fraction in enumerate(fractions):
        now += gaps[index] if gaps else 0.0
        left = max(0.0, limit - now)
        a = budget.allot(now)
        assert 0.0 <= a.seconds <= left + EPS  # never more than the time left
        assert a.deadline <= max(limit, now) + EPS
        allotted.append(a.seconds)
        budget.settle(a, fraction * a.seconds)
        now += fraction * a.seconds
        assert budget.bank_s >= 0.0
    return allotted, now, limit


@settings(max_examples=150, deadline=None)
@given(
    preset=st.sampled_from(PRESET_NAMES),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=80),
    startup_s=st.floats(0.0, 17_400.0),
)
def test_a_run_never_uses_more_than_the_time_left(preset: str, fractions: list[float],
                                                  startup_s: float) -> None:
    config = preset_config(preset, num_problems=len(fractions))
    _, end, limit = serve(config, fractions, startup_s)
    assert end <= limit + EPS


@settings(max_examples=150, deadline=None)
@given(
    preset=st.sampled_from(PRESET_NAMES),
    problems=st.integers(1, 80),
    startup_s=st.floats(0.0, 17_400.0),
    total_s=st.floats(600.0, 40_000.0),
)
def test_the_allotments_of_a_full_run_sum_to_at_most_the_time_left(
        preset: str, problems: int, startup_s: float, total_s: float) -> None:
    config = preset_config(preset, num_problems=problems, total_s=total_s)
    startup_s = min(startup_s, total_s)
    allotted, _, limit = serve(config, [1.0] * problems, startup_s)
    assert sum(allotted) <= max(0.0, limit) + EPS


@settings(max_examples=150, deadline=None)
@given(problems=st.integers(2, 80), limit_s=st.floats(60.0, 40_000.0))
def test_nemo_spreads_a_shortfall_evenly(problems: int, limit_s: float) -> None:
    """When the base does not fit every problem, all get the same share, the last ones too."""
    config = preset_config("nemo", num_problems=problems, total_s=limit_s, safety_margin_s=0.0)
    allotted, _, _ = serve(config, [1.0] * problems, 0.0)
    if limit_s < problems * config.base_s:
        assert max(allotted) - min(allotted) < EPS * max(1.0, limit_s)
        assert sum(allotted) == pytest.approx(limit_s)
    else:
        assert min(allotted) == pytest.approx(config.base_s)


@settings(max_examples=150, deadline=None)
@given(problems=st.integers(1, 80), limit_s=st.floats(60.0, 80_000.0),
       fractions=st.data())
def test_aimo3_gives_every_problem_the_base_whenever_it_fits(
        problems: int, limit_s: float, fractions: st.DataObject) -> None:
    config = preset_config("aimo3", num_problems=problems, total_s=limit_s, safety_margin_s=0.0)
    used = fractions.draw(st.lists(st.floats(0.0, 1.0), min_size=problems, max_size=problems))
    allotted, _, _ = serve(config, used, 0.0)
    if limit_s >= problems * config.base_s:
        assert min(allotted) >= config.base_s - EPS
    assert max(allotted) <= config.high_s + EPS


@settings(max_examples=100, deadline=None)
@given(
    preset=st.sampled_from(PRESET_NAMES),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=50, max_size=50),
    gaps=st.lists(st.floats(0.0, 120.0), min_size=50, max_size=50),
)
def test_time_spent_between_problems_is_absorbed(preset: str, fractions: list[float],
                                                 gaps: list[float]) -> None:
    """Gateway time outside problems comes out of later allotments; none ends past the limit
    unless it started past it (and then it gets nothing)."""
    serve(preset_config(preset), fractions, 0.0, gaps)


@settings(max_examples=100, deadline=None)
@given(used=st.lists(st.floats(0.0, 600.0), min_size=1, max_size=50))
def test_bank_equals_unused_base_minus_draws_when_time_is_plenty(used: list[float]) -> None:
    config = BudgetConfig(total_s=1e9)
    budget = TimeBudget(config, start=0.0)
    expected, now = 0.0, 0.0
    for u in used:
        a = budget.allot(now)
        assert a.extra_s == pytest.approx(min(config.max_extra_s, expected))
        spent = min(u, a.seconds)
        budget.settle(a, spent)
        now += spent
        expected = max(0.0, expected + config.base_s - spent)
        assert budget.bank_s == pytest.approx(expected)


@settings(max_examples=200, deadline=None)
@given(seconds=st.floats(0.0, 5_000.0), wind=st.floats(0.0, 100.0),
       margin=st.floats(0.0, 100.0))
def test_the_wind_down_stays_inside_the_allotment(seconds: float, wind: float,
                                                  margin: float) -> None:
    window = wind_down(seconds, wind, margin)
    assert 0.75 * seconds - EPS <= window.solve_s <= window.answer_s <= seconds
    assert window.answer_s >= 0.75 * seconds - EPS


def test_the_dry_run_and_predict_share_the_wind_down() -> None:
    from aimo_infer.evaluate.run_budget import solve_window

    for seconds in (4.0, 30.0, 330.0):
        assert solve_window(seconds, 10.0) == wind_down(seconds, 10.0, 2.0).solve_s
    assert wind_down(330.0, 10.0, 2.0) == wind_down(330.0, 10.0, 2.0)
    assert (wind_down(330.0, 10.0, 2.0).solve_s, wind_down(330.0, 10.0, 2.0).answer_s) == \
        (320.0, 328.0)
    assert wind_down(8.0, 10.0, 2.0).solve_s == 6.0  # a short allotment keeps 3/4 for the solve


# ----- the bank and the bookkeeping --------------------------------------------------------


def test_unused_time_goes_to_the_bank_and_draws_come_out_of_it() -> None:
    budget = TimeBudget(ROOMY, start=0.0)
    a = budget.allot(0.0)
    assert (a.index, a.base_s, a.extra_s, a.seconds) == (0, 350.0, 0.0, 350.0)
    budget.settle(a, 100.0)
    assert budget.bank_s == 250.0
    b = budget.allot(100.0)
    assert (b.extra_s, b.seconds) == (210.0, 560.0)
    budget.settle(b, 500.0)
    assert budget.bank_s == pytest.approx(100.0)
    c = budget.allot(600.0)
    assert (c.extra_s, c.seconds) == (100.0, 450.0)
    budget.settle(c, 450.0)
    assert budget.bank_s == 0.0
    assert budget.problems_left == 7


def test_start_up_and_margin_shorten_the_run() -> None:
    config = BudgetConfig(base_s=100, max_extra_s=0, total_s=1000, safety_margin_s=50,
                          min_per_problem_s=10, num_problems=3)
    budget = TimeBudget(config, start=10.0, elapsed_before_s=800.0)
    assert budget.end == 10.0 + 1000 - 800 - 50
    assert budget.allot(10.0).seconds == 50.0  # 150 s for 3 problems
    assert budget.allot(60.0).seconds == 50.0
    assert budget.allot(110.0).seconds == 50.0
    assert budget.allot(170.0).seconds == 0.0  # past the end: nothing, never negative


def test_more_problems_than_expected_get_what_is_left() -> None:
    config = BudgetConfig(base_s=100, max_extra_s=0, total_s=1000, safety_margin_s=0,
                          min_per_problem_s=10, num_problems=1)
    budget = TimeBudget(config, start=0.0)
    budget.settle(budget.allot(0.0), 100.0)
    assert budget.problems_left == 0
    assert budget.allot(950.0).seconds == 50.0


@pytest.mark.parametrize("change", [
    {"base_s": 0}, {"max_extra_s": -1}, {"total_s": 0}, {"safety_margin_s": -1},
    {"min_per_problem_s": 400}, {"num_problems": 0}, {"preset": "greedy"}, {"high_s": 10},
])
def test_bad_settings_are_rejected(change: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        TimeBudget(dataclasses.replace(BudgetConfig(), **change), start=0.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="unknown budget preset"):
        preset_config("greedy")


def test_settling_twice_or_an_unknown_allotment_is_an_error() -> None:
    budget = TimeBudget(ROOMY, start=0.0)
    a = budget.allot(0.0)
    budget.settle(a, 1.0)
    with pytest.raises(ValueError):
        budget.settle(a, 1.0)
    with pytest.raises(ValueError):
        budget.settle(a, -1.0)


# ----- aimo-infer budget ----------------------------------------------------------------------


def summary(out: str) -> dict[str, float]:
    last = out.strip().splitlines()[-1]
    return {k: float(v) for k, v in (item.split("=") for item in last.split())}


@pytest.mark.parametrize(("preset", "expected"), [
    ("nemo", {"min_allotted_s": 330.0, "max_allotted_s": 330.0, "planned_total_s": 16500.0,
              "limit_s": 16500.0}),
    ("aimo3", {"min_allotted_s": 300.0, "max_allotted_s": 900.0, "planned_total_s": 16500.0,
               "limit_s": 16500.0}),
])
def test_budget_command_prints_the_scenario(preset: str, expected: dict[str, float],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["budget", "--preset", preset, "--problems", "50", "--startup-s", "900",
                     "--used", "full"]) == 0
    out = capsys.readouterr().out
    assert summary(out) == expected
    assert len([line for line in out.splitlines() if line.strip()[:1].isdigit()]) == 50


def test_budget_command_replays_a_trace(tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "trace.jsonl"
    trace.write_text("".join(json.dumps(e) + "\n" for e in [
        {"event": "problem_start", "problem_id": "a"},
        {"event": "predict", "elapsed_s": 100.0},
        {"event": "predict", "elapsed_s": 5000.0},  # capped at its allotment
    ]))
    assert cli_main(["budget", "--problems", "3", "--used", "trace", str(trace)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()
            if line.strip()[:1].isdigit()]
    assert [float(r[3]) for r in rows] == [100.0, 560.0, float(rows[2][2])]


@pytest.mark.parametrize(("argv", "message"), [
    (["--used", "most"], "--used takes"),
    (["--used", "trace"], "--used takes"),
    (["--used", "full", "x"], "--used takes"),
    (["--problems", "0"], "--problems must be >= 1"),
    (["--startup-s", "-5"], "--startup-s must be >= 0"),
    (["--used", "trace", "no/such.jsonl"], "trace not found"),
])
def test_budget_command_bad_input(argv: list[str], message: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["budget", *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
