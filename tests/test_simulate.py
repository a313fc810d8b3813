"""The policy simulator: controller semantics on known arrivals, faithful re-scoring of
recorded runs, monotone time in the policy, per-sample traces, the command."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aimo_infer.cli import main
from aimo_infer.config import BudgetConfig
from aimo_infer.evaluate.run_budget import scaled_budget
from aimo_infer.evaluate.runs import read_results
from aimo_infer.evaluate.sample_traces import draw_problem, group_by_model, load_sampled_problems
from aimo_infer.evaluate.simulate import (
    LengthModel,
    SimProblem,
    SimStream,
    problem_from_record,
    simulate_problem,
    simulate_run,
)
from aimo_infer.evaluate.simulate_cli import rescore_records, sample_sweep, sweep_policies
from aimo_infer.solve.confidence import ConfidenceSummary
from aimo_infer.solve.policies import PRESETS, ConfidenceStop, parse_policy
from aimo_infer.solve.vote import SelectSettings
from tests.dryrun_fixtures import record, record_run, stream, synthetic_problems

WAIT_ALL = parse_policy("all")


def sim(answers: list[object], times: list[float], correct: object = 4) -> SimProblem:
    streams = tuple(SimStream(a, t, 100) for a, t in zip(answers, times, strict=True))  # type: ignore[arg-type]
    return SimProblem("p", "s", streams, {correct: True})  # type: ignore[dict-item]


# --- one problem ---------------------------------------------------------------------------


def test_agreement_stops_at_the_arrival_that_completes_it() -> None:
    problem = sim([4, 5, 4, 4, 4, 6], [1.0, 2.0, 3.0, 4.0, 9.0, 5.0])
    out = simulate_problem(problem, parse_policy("agree=3"))
    assert out.decision_s == 4.0
    assert out.stop_reason.startswith("agreement: 3 agree on 4")
    assert dict(out.vote.counts) == {4: 3, 5: 1}
    assert out.correct is True


def test_a_rule_firing_on_the_last_stream_reports_all_finished() -> None:
    out = simulate_problem(sim([4, 4, 4], [1.0, 2.0, 3.0]), parse_policy("agree=3"))
    assert out.stop_reason == "all finished" and out.decision_s == 3.0


def test_quorum_counts_streams_without_an_answer() -> None:
    out = simulate_problem(sim([None, 7, None, 4], [1.0, 2.0, 3.0, 4.0]), parse_policy("quorum=3"))
    assert out.decision_s == 3.0 and out.vote.num_missing == 2 and out.answer == 7
    assert out.correct is False


def test_tie_goes_to_the_answer_that_reached_the_count_first() -> None:
    out = simulate_problem(sim([5, 4, 4, 5], [1.0, 2.0, 3.0, 4.0]), WAIT_ALL)
    assert out.answer == 4


def test_deadline_cuts_and_partial_answers_vote_only_when_known() -> None:
    streams = (
        SimStream(4, 10.0, 100),
        SimStream(4, 80.0, 800),  # ends after the deadline: cut, its answer not yet written
        SimStream(9, 90.0, 900, cut_s=40.0),  # recorded cut at 40 s with partial answer 9
        SimStream(9, 95.0, 900, cut_s=70.0),  # its partial answer came after the deadline
    )
    out = simulate_problem(SimProblem("p", "s", streams, {4: True}), WAIT_ALL, deadline_s=50.0)
    assert out.stop_reason == "deadline" and out.decision_s == 50.0
    assert dict(out.vote.counts) == {4: 1, 9: 1} and out.vote.num_missing == 2
    assert out.cut_answers == 2
    assert out.tokens == 100 + 500 + 500 + 473


def test_a_cut_stream_run_past_its_cut_votes_no_answer() -> None:
    streams = (SimStream(4, 1.0, 10), SimStream(4, 5.0, 50, cut_s=2.0), SimStream(5, 3.0, 30))
    out = simulate_problem(SimProblem("p", "s", streams, {4: True}), WAIT_ALL)
    assert out.vote.counts == ((4, 1), (5, 1)) and out.vote.num_missing == 1
    assert out.cut_answers == 1 and out.decision_s == 5.0


def test_no_reference_gives_no_correctness() -> None:
    problem = dataclasses.replace(sim([4], [1.0]), has_reference=False)
    assert simulate_problem(problem, WAIT_ALL).correct is None


# --- tighter policies never take longer ----------------------------------------------------

ANSWERS = st.lists(st.sampled_from([1, 2, 3, None]), min_size=12, max_size=12)
TIMES = st.lists(st.floats(1.0, 900.0), min_size=12, max_size=12, unique=True)
NESTED = [  # (tighter, looser): the tighter one fires whenever the looser one does
    ("agree=3", "agree=5"), ("agree=4", "agree10"), ("quorum=6", "quorum=10"),
    ("nemo", "all"), ("agree4", "all"), ("agree=4of5,quorum=8", "nemo"),
    ("agree=4of5,agree=3", "agree=4of5"), ("imagination", "agree=5of7"),
]


@settings(max_examples=60, deadline=None)
@given(problems=st.lists(st.tuples(ANSWERS, TIMES), min_size=1, max_size=8),
       base=st.floats(60.0, 400.0), extra=st.floats(0.0, 300.0), share=st.floats(50.0, 500.0))
def test_tighter_policies_never_report_more_time(
    problems: list[tuple[list[object], list[float]]], base: float, extra: float, share: float,
) -> None:
    sims = [sim(a, t) for a, t in problems]
    budget = scaled_budget(BudgetConfig(base_s=base, max_extra_s=extra, min_per_problem_s=10.0),
                           len(sims), per_problem_s=share)
    for tight, loose in NESTED:
        t_rule, l_rule = parse_policy(tight), parse_policy(loose)
        for p in sims:  # no budget: problem by problem
            assert simulate_problem(p, t_rule).decision_s <= simulate_problem(p, l_rule).decision_s
        t_run = simulate_run(sims, t_rule, budget, wind_down_s=10.0)
        l_run = simulate_run(sims, l_rule, budget, wind_down_s=10.0)
        t_total = l_total = 0.0
        for t_out, l_out in zip(t_run.problems, l_run.problems, strict=True):
            t_total, l_total = t_total + t_out.used_s, l_total + l_out.used_s
            assert t_total <= l_total + 1e-6


def test_a_recorded_run_sweeps_monotone_in_the_quorum(tmp_path: Path) -> None:
    records, _ = record_run(tmp_path / "run", synthetic_problems(6), "all")
    budget = scaled_budget(BudgetConfig(), len(records))
    totals = [rescore_records(records, f"quorum={q}", None, budget, 10.0, 4096).total_s
              for q in (2, 4, 6, 8, 10, 12)]
    assert totals == sorted(totals)
    assert totals[0] < totals[-1]


# --- faithful re-scoring of recorded runs --------------------------------------------------


@pytest.mark.parametrize("policy", ["nemo", "agree4", "all", "agree=3of4", "quorum=6",
                                    "imagination"])
def test_the_recorded_policy_reproduces_the_recorded_run(tmp_path: Path, policy: str) -> None:
    records, _ = record_run(tmp_path / "run", synthetic_problems(8), policy)
    budget = scaled_budget(BudgetConfig(), len(records))
    outcome = rescore_records(records, policy, None, budget, 10.0, 4096)
    assert [o.problem_id for o in outcome.problems] == [r.problem_id for r in records]
    for sim_out, rec in zip(outcome.problems, records, strict=True):
        assert sim_out.answer == rec.answer
        assert [list(c) for c in sim_out.vote.counts] == [list(c) for c in rec.votes]
        assert sim_out.vote.num_missing == rec.num_missing
        assert sim_out.stop_reason == rec.stop_reason
        assert sim_out.correct == rec.correct
        assert sim_out.decision_s == rec.decision_s
        assert sim_out.used_s == pytest.approx(rec.used_s, abs=1e-9)
        assert sim_out.cut_answers == 0
    assert outcome.num_correct == sum(bool(r.correct) for r in records)


def test_fewer_streams_match_a_run_with_fewer_streams(tmp_path: Path) -> None:
    problems = synthetic_problems(5)
    full, _ = record_run(tmp_path / "twelve", problems, "all")
    for policy in ("all", "agree=3"):
        six, _ = record_run(tmp_path / f"six-{policy}", problems, policy, num_streams=6)
        outcome = rescore_records(full, policy, 6, None, 0.0, 4096)
        for sim_out, rec in zip(outcome.problems, six, strict=True):
            assert sim_out.answer == rec.answer and sim_out.stop_reason == rec.stop_reason
            assert [list(c) for c in sim_out.vote.counts] == [list(c) for c in rec.votes]


def test_more_streams_than_recorded_is_an_error(tmp_path: Path) -> None:
    records, _ = record_run(tmp_path / "run", synthetic_problems(1), "all", num_streams=4)
    with pytest.raises(ValueError, match="p0: 5 streams asked, 4 recorded"):
        rescore_records(records, "all", 5, None, 0.0, 4096)


def test_a_faster_engine_divides_generation_time() -> None:
    rec = record("p", "4", 4, [stream(0, 4, True, 10.0), stream(1, 4, True, 30.0)])
    rec.streams[1].code_s = 6.0  # code time does not speed up
    problem = problem_from_record(rec, LengthModel((), 1.0, 4096), tok_s_scale=2.0)
    assert [s.finish_s for s in problem.streams] == [5.0, 18.0]


def test_cut_streams_end_at_the_median_of_longer_streams() -> None:
    lengths = LengthModel((50, 100, 200, 400, 800), 10.0, 1000)
    assert lengths.final_tokens(150) == 400  # median of 200, 400, 800
    assert lengths.final_tokens(900) == 1000  # none longer: the token limit
    cancelled = stream(2, None, False, 12.0, tokens=150, end="cancelled")
    rec = record("p", "4", 4, [stream(0, 4, True, 5.0), stream(1, 4, True, 10.0), cancelled],
                 stop_reason="agreement: 2 agree on 4")
    problem = problem_from_record(rec, lengths)
    cut = problem.streams[2]
    assert cut.cut_s == 10.0 and cut.tokens == 400
    assert cut.finish_s == pytest.approx(10.0 + 250 / 15.0)  # its own rate: 150 tokens in 10 s


# --- per-sample traces ---------------------------------------------------------------------


def write_traces(path: Path, models: int = 2, problems: int = 5) -> Path:
    rng = random.Random(3)
    with path.open("w") as fh:
        for m in range(models):
            for i in range(problems):
                samples = [{"answer": str(i if rng.random() < 0.7 else 900 + j),
                            "tokens": rng.randint(500, 5000), "chars": None, "correct": None}
                           for j in range(20)]
                samples.append({"answer": None, "tokens": None, "chars": None, "correct": None})
                fh.write(json.dumps({"problem_id": f"q{i}", "model": f"m{m}", "dataset": "d",
                                     "reference_answer": str(i), "samples": samples}) + "\n")
    return path


def test_sample_traces_load_and_draw(tmp_path: Path) -> None:
    problems = load_sampled_problems(write_traces(tmp_path / "t.jsonl"))
    assert len(problems) == 10 and set(group_by_model(problems)) == {"m0", "m1"}
    assert problems[0].samples[-1].answer is None and problems[0].samples[-1].tokens == 0
    drawn = draw_problem(problems[0], 12, 50.0, random.Random(0))
    assert len(drawn.streams) == 12
    assert all(s.finish_s == s.tokens / 50.0 for s in drawn.streams)
    with pytest.raises(ValueError, match="30 streams asked, 21 samples"):
        draw_problem(problems[0], 30, 50.0, random.Random(0))


def test_sample_sweep_is_reproducible_and_monotone(tmp_path: Path) -> None:
    groups = group_by_model(load_sampled_problems(write_traces(tmp_path / "t.jsonl")))
    args = (12, 20.0, BudgetConfig(), 10)
    first = sample_sweep(groups, ["agree=2", "all"], *args, seed=5)
    again = sample_sweep(groups, ["agree=2", "all"], *args, seed=5)
    assert first == again
    tight, loose = first
    assert tight.total_s <= loose.total_s and tight.problems == loose.problems == 10
    assert 0.0 <= loose.accuracy <= 1.0 and loose.correct_se is not None


def test_real_traces_folder_is_readable() -> None:
    problems = load_sampled_problems(Path("data/traces"))
    models = group_by_model(problems)
    assert len(models) >= 11
    assert all(len(p.samples) >= 80 for p in problems)


def test_a_malformed_trace_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text('{"problem_id": "a", "reference_answer": "x", "samples": []}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:1: not a per-sample trace record"):
        load_sampled_problems(path)


# --- the command ---------------------------------------------------------------------------


def test_simulate_command_prints_recorded_and_sweep(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    record_run(tmp_path / "run", synthetic_problems(3), "nemo")
    assert main(["simulate", str(tmp_path / "run"), "--sweep", "--tok-s-scale", "2"]) == 0
    out = capsys.readouterr().out
    assert "recorded" in out
    for policy in sweep_policies():
        assert policy in out
    assert set(PRESETS) <= set(sweep_policies())


def test_simulate_command_on_sample_traces(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_traces(tmp_path / "t.jsonl")
    assert main(["simulate", str(path), "--policy", "agree4", "--draws", "3",
                 "--model", "m1"]) == 0
    assert "agree4" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message", "code"), [
    (["simulate", "/no/such/run"], "not found: /no/such/run", 1),
    (["simulate", "{run}", "--policy", "agree=9of3"], "bad stop policy", 2),  # a usage error
    (["simulate", "{run}", "--streams", "20"], "20 streams asked", 1),
    (["simulate", "{traces}", "--model", "nobody"], "no model 'nobody'", 1),
    (["simulate", "{empty}"], "empty.jsonl: no per-sample trace records", 1),
    (["simulate", "{bad_samples}"], "bad.jsonl:1: not a per-sample trace record", 1),
    (["simulate", "{binary}"], "binary.jsonl: not UTF-8 text", 1),
    (["simulate", "{run}", "--streams", "0"], "--streams must be >= 1", 2),
    (["simulate", "{run}", "--base-s", "nan"], "--base-s must be finite and > 0", 2),
    (["simulate", "{run}", "--tok-s-scale", "inf"], "--tok-s-scale must be finite and > 0", 2),
    (["simulate", "{traces}", "--draws", "0"], "--draws must be >= 1", 2),
])
def test_simulate_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        argv: list[str], message: str, code: int) -> None:
    record_run(tmp_path / "run", synthetic_problems(1), "all")
    traces = write_traces(tmp_path / "t.jsonl")
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "bad.jsonl").write_text(json.dumps(
        {"problem_id": "q", "reference_answer": "1", "samples": ["7"]}) + "\n")
    (tmp_path / "binary.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    argv = [a.format(run=tmp_path / "run", traces=traces, empty=tmp_path / "empty.jsonl",
                     bad_samples=tmp_path / "bad.jsonl", binary=tmp_path / "binary.jsonl")
            for a in argv]
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_no_budget_drops_the_deadlines_for_traces(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """At 1 tok/s every stream outlasts a 60 s share: with the budget each problem is cut at its
    deadline; with --no-budget every stream runs to its end."""
    groups = group_by_model(load_sampled_problems(write_traces(tmp_path / "t.jsonl")))
    cut, = sample_sweep(groups, ["all"], 4, 1.0, BudgetConfig(), 2, per_problem_s=60.0)
    free, = sample_sweep(groups, ["all"], 4, 1.0, None, 2)
    assert cut.total_s <= 60.0 * cut.problems < free.total_s
    assert free.total_s / free.problems >= 500  # the shortest sample is 500 tokens
    path = tmp_path / "t.jsonl"
    args = ["simulate", str(path), "--policy", "all", "--tok-s", "1", "--draws", "2",
            "--per-problem-s", "60", "--streams", "4"]
    assert main(args) == 0
    budgeted = capsys.readouterr().out
    assert main([*args, "--no-budget"]) == 0
    assert capsys.readouterr().out != budgeted


# --- confidence: selection rules and the online stop, replayed --------------------------------


def summary(entropy: float = 1.0, lowest: float = 2.0,
            lows: tuple[tuple[int, float], ...] = ()) -> ConfidenceSummary:
    return ConfidenceSummary(100, entropy, entropy, lowest, lowest, lowest, 16, 8, lows)


def test_a_selection_rule_rechooses_from_recorded_confidence() -> None:
    streams = (SimStream(5, 1.0, 100, confidence=summary(entropy=2.0)),
               SimStream(5, 2.0, 100, confidence=summary(entropy=2.0)),
               SimStream(9, 3.0, 100, confidence=summary(entropy=0.01)))  # fmt: skip
    problem = SimProblem("p", "s", streams, {9: True})
    assert simulate_problem(problem, WAIT_ALL).answer == 5
    out = simulate_problem(problem, WAIT_ALL, selection=SelectSettings("entropy"))
    assert out.answer == 9 and out.correct and out.vote.rule == "entropy"


def test_the_online_stop_replays_a_fixed_threshold() -> None:
    # Stream 1 (10 s, 100 tokens) fell to window confidence 1.0 at token 40: stopped at 4 s.
    streams = (SimStream(5, 6.0, 100, confidence=summary(lows=((10, 3.0),))),
               SimStream(9, 10.0, 100, confidence=summary(lows=((10, 3.0), (40, 1.0)))),
               SimStream(9, 8.0, 100, confidence=summary(lows=((10, 3.0),))))  # fmt: skip
    problem = SimProblem("p", "s", streams, {9: True})
    assert simulate_problem(problem, WAIT_ALL).answer == 9
    out = simulate_problem(problem, WAIT_ALL, confidence_stop=ConfidenceStop(threshold=2.0))
    assert dict(out.vote.counts) == {5: 1, 9: 1}  # the stopped stream does not vote
    assert out.answer == 5  # the tie goes to the earlier answer
    assert out.tokens == 240 and out.decision_s == 8.0
    # With the leader rule the dropped stream no longer counts as running: stop at 6 s.
    led = simulate_problem(problem, parse_policy("leader"),
                           confidence_stop=ConfidenceStop(threshold=2.0))
    assert led.stop_reason.startswith("leader") and led.decision_s == 6.0


def test_a_warmup_threshold_applies_once_the_warmup_streams_finished() -> None:
    # Warmup: the first two finished streams' lowest groups 2 and 4: the median 3 at 2 s.
    streams = (SimStream(1, 1.0, 100, confidence=summary(lowest=2.0)),
               SimStream(1, 2.0, 100, confidence=summary(lowest=4.0)),
               SimStream(7, 10.0, 100, confidence=summary(lows=((10, 2.5),))),  # below at 1 s
               SimStream(7, 10.0, 100, confidence=summary(lows=((10, 3.5),))))  # fmt: skip
    problem = SimProblem("p", "s", streams, {1: True})
    out = simulate_problem(problem, WAIT_ALL,
                           confidence_stop=ConfidenceStop(warmup=2, percentile=50.0))
    assert dict(out.vote.counts) == {1: 2, 7: 1}
    assert out.tokens == 100 + 100 + 20 + 100  # stopped at 2 s, a fifth of its 10 s


def _confident_run(run_dir: Path) -> None:

    from aimo_infer.backends.replay import ReplayEngine
    from aimo_infer.evaluate.dryrun import run_problems
    from tests.dryrun_fixtures import cot_config, scripts_for

    problems = synthetic_problems(3)
    engine = ReplayEngine(scripts_for(problems, 6, 1), yield_every=1)
    cfg = cot_config("all", 6, len(problems))
    cfg.solve.confidence.logprobs = 3
    run_dir.mkdir(parents=True)
    run_problems(cfg, problems, run_dir, engine=engine)


def test_simulate_select_all_and_confidence_stop_on_a_recorded_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _confident_run(tmp_path / "run")
    records = read_results(tmp_path / "run")
    assert all(s.confidence is not None for r in records for s in r.streams)
    assert main(["simulate", str(tmp_path / "run"), "--select", "all", "--policy", "all",
                 "--no-budget"]) == 0
    out = capsys.readouterr().out
    for rule in ("majority", "entropy", "vote-then-confidence", "deepconf"):
        assert f"all | select {rule}" in out
    assert main(["simulate", str(tmp_path / "run"), "--policy", "all", "--confidence-stop", "deepconf",
                 "--stop-percentile", "50", "--stop-warmup", "2", "--no-budget"]) == 0
    assert "all | conf-stop" in capsys.readouterr().out


def test_simulate_select_without_recorded_confidence_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    record_run(tmp_path / "run", synthetic_problems(2), "all", num_streams=4)
    assert main(["simulate", str(tmp_path / "run"), "--select", "entropy"]) != 0
    err = capsys.readouterr().err.strip()
    assert "no stream recorded its confidence" in err and "\n" not in err
    assert main(["simulate", str(tmp_path / "run"), "--select", "best"]) != 0
    assert "unknown selection rule 'best'" in capsys.readouterr().err
