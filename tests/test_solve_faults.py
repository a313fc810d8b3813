"""solve() under a misbehaving engine: it returns by the deadline plus the cut grace, every
stream keeps the text it received, and streams cut together vote in a fixed order.

The bound checked here is liveness, not speed: without the guarantee these engines hold
``solve()`` for minutes (until their 100,000 tokens run out) or for ever, so a generous slack
cannot hide a failure. benchmarks/solve_overrun.py measures the overruns themselves.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from aimo_infer.backends.base import Engine
from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.cli import main
from aimo_infer.config import Config
from aimo_infer.runtime import LEFTOVER_GRACE_S
from aimo_infer.solve.controller import Controller, ProblemResult, stream_seed
from aimo_infer.solve.cutoff import CANCEL_GRACE_S, cut_grace
from aimo_infer.traces import TraceWriter, read_trace
from tests.fault_engines import (
    CancelHangs,
    CancelRaises,
    FaultEngine,
    IgnoresCancel,
    RaisesAfterText,
    SwallowsCancellation,
    TalksAfterFinish,
)

PID = "p1"
DEADLINE_IN_S = 0.4
LIVENESS_SLACK_S = 3.0  # far below the minutes a hang would take; see the module docstring


def config(n: int = 3, policy: str = "all", prompt: str = "cot") -> Config:
    cfg = Config()
    cfg.solve.num_streams = n
    cfg.solve.stop_policy = policy
    cfg.solve.prompt = prompt
    return cfg


async def timed_solve(engine: Engine, cfg: Config, deadline_in: float | None,
                      tracer: TraceWriter | None = None) -> tuple[ProblemResult, float]:
    """The result and how far past its deadline solve() returned (0 without a deadline)."""
    ctl = Controller(engine, None, cfg, tracer=tracer)
    start = time.monotonic()
    deadline = None if deadline_in is None else start + deadline_in
    result = await ctl.solve(PID, "What is 2+2?", deadline)
    overrun = 0.0 if deadline is None else time.monotonic() - deadline
    await engine.shutdown()  # releases the streams a fault engine keeps alive
    return result, overrun


def run(engine: Engine, cfg: Config | None = None, deadline_in: float | None = DEADLINE_IN_S,
        tracer: TraceWriter | None = None) -> ProblemResult:
    result, overrun = asyncio.run(timed_solve(engine, cfg or config(), deadline_in, tracer))
    grace = cut_grace(deadline_in)
    assert overrun < grace + LIVENESS_SLACK_S, f"solve() returned {overrun:.2f} s late"
    return result


def test_grace_scales_with_the_allotment_and_stays_under_the_watchdog_margin() -> None:
    assert cut_grace(None) == CANCEL_GRACE_S
    assert cut_grace(600.0) == CANCEL_GRACE_S
    for window in (0.4, 2.0, 7.0, 13.9):
        # predict() keeps half the solve window (at least) between the solve deadline and its
        # watchdog for allotments under 20 s: the grace must fit inside that margin.
        assert cut_grace(window) <= 0.25 * window < 0.5 * window


@pytest.mark.parametrize("engine_type", [CancelRaises, CancelHangs, IgnoresCancel],
                         ids=["cancel-raises", "cancel-hangs", "ignores-cancel"])
def test_deadline_holds_when_cancel_misbehaves(engine_type: type[FaultEngine]) -> None:
    engine = engine_type()
    result = run(engine)
    assert result.stop_reason == "deadline"
    assert [s.end for s in result.streams] == ["deadline"] * 3
    assert result.answer == 12  # each cut stream votes with the text it received
    assert all(s.text.startswith("First guess \\boxed{12}") for s in result.streams)
    assert sorted(engine.cancel_calls) == [f"{PID}/{i}/0" for i in range(3)]
    assert engine.num_running() == 0


def test_a_stream_that_swallows_cancellation_is_abandoned_with_its_text(tmp_path: Path) -> None:
    engine = SwallowsCancellation()
    trace = tmp_path / "trace.jsonl"
    with TraceWriter(trace) as tracer:
        result = run(engine, tracer=tracer)
    assert result.stop_reason == "deadline"
    assert result.answer == 12 and result.vote.num_votes == 3
    for stream in result.streams:
        assert stream.end == "deadline" and stream.finished
        assert stream.error == "the stream did not end after cancel"
        assert stream.text.startswith("First guess \\boxed{12}") and stream.tokens >= 8
    events = list(read_trace(trace))
    segments = [e for e in events if e["event"] == "segment"]
    assert sorted(e["stream"] for e in segments) == [0, 1, 2]  # the partial text is traced
    assert all(e["text"].startswith("First guess") for e in segments)
    ends = [e for e in events if e["event"] == "stream_end"]
    assert len(ends) == 3 and {e["answer"] for e in ends} == {12}
    assert events[-1]["event"] == "problem_end"  # nothing written after the problem ended


def test_policy_cut_also_abandons_a_stream_that_will_not_end() -> None:
    s = [stream_seed(0, PID, i) for i in range(2)]
    quick = ReplayEngine({s[0]: ["\\boxed{4}"]})

    class Mixed(SwallowsCancellation):
        """Stream 0 answers at once; stream 1 never ends."""

        def generate(self, request):  # type: ignore[no-untyped-def]
            if request.seed == s[0]:
                return quick.generate(request)
            return super().generate(request)

    engine = Mixed()
    cfg = config(n=2, policy="agree=1")
    result, overrun = asyncio.run(timed_solve(engine, cfg, 2.0))
    assert overrun < 0  # the policy fired at once; the cut waited its grace (0.5 s), no more
    assert result.stop_reason.startswith("agreement")
    assert [st.end for st in result.streams] == ["stop", "cancelled"]
    assert result.answer == 4


@pytest.mark.parametrize(
    "exc",
    [RuntimeError("decoder crashed"), asyncio.CancelledError(), SystemExit(3)],
    ids=["runtime-error", "cancelled-error", "system-exit"],
)
def test_an_engine_raising_keeps_what_it_streamed(exc: BaseException, tmp_path: Path) -> None:
    engine = RaisesAfterText(exc)
    with TraceWriter(tmp_path / "trace.jsonl") as tracer:
        result = run(engine, deadline_in=None, tracer=tracer)
    segments = [e for e in read_trace(tmp_path / "trace.jsonl") if e["event"] == "segment"]
    assert [(e["text"], e["tokens"]) for e in segments] == [("So \\boxed{7}. Checking ", 5)] * 3
    assert result.stop_reason == "all finished"
    for stream in result.streams:
        assert stream.end == "error"
        assert stream.text == "So \\boxed{7}. Checking "
        assert stream.tokens == 5
        assert stream.error and type(exc).__name__ in stream.error
    assert result.answer == 7 and result.vote.num_votes == 3


def test_text_after_the_finish_delta_is_ignored_and_not_read() -> None:
    engine = TalksAfterFinish()
    result = run(engine, config(n=1), deadline_in=None)
    stream = result.streams[0]
    assert stream.end == "stop"
    assert stream.text == "The answer is \\boxed{5}."
    assert result.answer == 5
    assert engine.yields_after_finish == 0  # the loop stopped reading at the finish delta


def test_streams_cut_together_vote_in_stream_order() -> None:
    """Two answers tie 2-2 among streams cut at the deadline. Cut streams vote in stream
    order, so the tie-break (the answer that reached the top count first: vote.py) picks 34
    (streams 1 and 2) over 21 (streams 0 and 3) in every run, whatever order the tasks ended
    in."""
    seeds = [stream_seed(0, PID, i) for i in range(4)]
    tail = " and on " + "z " * 5000
    answers = [21, 34, 34, 21]
    scripts = {seed: [f"\\boxed{{{a}}}" + tail] for seed, a in zip(seeds, answers, strict=True)}
    outcomes = set()
    for _ in range(5):
        engine = ReplayEngine(scripts, tokens_per_s=300)
        result = run(engine, config(n=4), deadline_in=0.3)
        assert result.stop_reason == "deadline"
        assert dict(result.vote.counts) == {21: 2, 34: 2}
        outcomes.add(result.answer)
    assert outcomes == {34}


def test_solve_command_returns_on_time_when_the_engine_ignores_cancel(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """``aimo-infer solve --timeout`` has the deadline guarantee of predict(): its streams
    swallow cancellation and even shutdown does not release them."""

    class Stubborn(SwallowsCancellation):
        async def shutdown(self) -> None:
            pass

    engine = Stubborn()
    monkeypatch.setattr("aimo_infer.runtime.create_engine", lambda _: engine)
    start = time.monotonic()
    code = main(["solve", "What is 2+2?", "--prompt", "cot", "--streams", "2",
                 "--timeout", str(DEADLINE_IN_S)])
    overrun = time.monotonic() - start - DEADLINE_IN_S
    assert code == 0
    assert "12" in capsys.readouterr().out
    assert engine.cancel_calls  # it was asked, and ignored it
    assert overrun < cut_grace(DEADLINE_IN_S) + LEFTOVER_GRACE_S + LIVENESS_SLACK_S


def test_dryrun_command_returns_on_time_when_the_engine_ignores_cancel(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``aimo-infer dryrun`` serves through the submission's Predictor, so it has predict()'s
    guarantee: a valid row within the allotment, and the command exits although the streams
    never end. (On an allotment this short the watchdog answers before the cut's grace ends,
    so the row is the fallback; the solve loop's own cut is tested above.)"""

    class Stubborn(SwallowsCancellation):
        async def shutdown(self) -> None:
            pass

    engine = Stubborn()
    monkeypatch.setattr("aimo_infer.evaluate.dryrun.create_engine", lambda _: engine)
    dataset = tmp_path / "set.jsonl"
    dataset.write_text('{"id": "a", "problem": "What is 6 + 6?", "answer": "12"}\n')
    per_problem_s = 8.0  # above the Predictor's 2 s return margin once the budget is scaled
    start = time.monotonic()
    code = main(["dryrun", str(dataset), "--prompt", "cot", "--streams", "2", "--quiet",
                 "--no-report", "--per-problem-s", str(per_problem_s),
                 "--out", str(tmp_path / "run")])
    elapsed = time.monotonic() - start
    assert code == 0
    results = [json.loads(line) for line in (tmp_path / "run" / "results.jsonl").open()]
    assert len(results) == 1 and isinstance(results[0]["submitted"], int)
    assert results[0]["used_s"] <= results[0]["allotted_s"]
    assert elapsed < per_problem_s + LEFTOVER_GRACE_S + LIVENESS_SLACK_S
