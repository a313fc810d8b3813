"""The solve loop on the replay engine: TIR, limits, policies, deadlines, traces."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.config import Config, EngineConfig
from aimo_infer.solve.controller import Controller, ProblemResult, stream_seed
from aimo_infer.solve.tir import NO_CODE_FEEDBACK
from aimo_infer.traces import TraceWriter, read_trace
from sandbox.api import ExecResult
from tests.fakes import ScriptedRunner

PID = "p1"


def config(n: int = 12, policy: str = "all", prompt: str = "tir-fence", **tir: int) -> Config:
    cfg = Config()
    cfg.solve.num_streams = n
    cfg.solve.stop_policy = policy
    cfg.solve.prompt = prompt
    for key, value in tir.items():
        setattr(cfg.solve.tir, key, value)
    return cfg


def seeds(n: int) -> list[int]:
    return [stream_seed(0, PID, i) for i in range(n)]


def solve(engine: ReplayEngine, cfg: Config, runner: ScriptedRunner | None = None,
          deadline_in: float | None = None, tracer: TraceWriter | None = None) -> ProblemResult:
    async def go() -> ProblemResult:
        ctl = Controller(engine, runner or ScriptedRunner(), cfg, tracer=tracer)
        deadline = None if deadline_in is None else time.monotonic() + deadline_in
        return await ctl.solve(PID, "What is 2+2?", deadline)

    return asyncio.run(go())


def test_twelve_streams_vote_and_all_finish() -> None:
    answers = [4, 4, 5, 4, 4, 3, 4, 4, 5, 4, 4, 4]
    engine = ReplayEngine({s: [f"So it is \\boxed{{{a}}}."] for s, a in zip(seeds(12), answers, strict=True)})
    result = solve(engine, config())
    assert result.answer == 4
    assert dict(result.vote.counts) == {4: 9, 5: 2, 3: 1}
    assert result.stop_reason == "all finished"
    assert all(s.end == "stop" for s in result.streams)
    assert len({r.seed for r in engine.requests}) == 12
    assert engine.num_running() == 0


def test_code_runs_output_is_appended_and_stream_resumes() -> None:
    seed = seeds(1)[0]
    engine = ReplayEngine({seed: ["Compute.\n```python\nprint(2+2)\n```", " Thus \\boxed{4}."]})
    runner = ScriptedRunner({"print(2+2)": ExecResult("ok", "4\n", "", 0.01)})
    result = solve(engine, config(n=1), runner)
    stream = result.streams[0]
    assert runner.calls == ["print(2+2)\n"]
    assert stream.num_code_calls == 1 and stream.code_calls[0].feedback == "4"
    assert "```\n```output\n4\n```\n Thus \\boxed{4}." in stream.text
    assert engine.requests[1].prompt.endswith("```output\n4\n```\n")
    assert result.answer == 4
    assert all(s.closed for s in runner.sessions)


def test_code_call_limit_ends_stream_without_running() -> None:
    seed = seeds(1)[0]
    block = "```python\nprint(1)\n```"
    engine = ReplayEngine({seed: [block, block, block, "\\boxed{1}"]})
    runner = ScriptedRunner()
    result = solve(engine, config(n=1, max_code_calls=2), runner)
    assert len(runner.calls) == 2
    assert result.streams[0].end == "code_limit"
    assert len(engine.requests) == 3


def test_missed_stop_string_is_caught_in_text_and_request_cancelled() -> None:
    seed = seeds(1)[0]
    # The engine "misses" </tool_call> and the model invents its own output afterwards.
    text = "<tool_call>\nprint(6*7)\n</tool_call>\n```output\n41\n```\nSo \\boxed{41}. " + "x" * 200
    engine = ReplayEngine({seed: [text, "Verified: \\boxed{42}"]}, honour_stop=False)
    runner = ScriptedRunner({"print(6*7)": ExecResult("ok", "42\n", "", 0.01)})
    result = solve(engine, config(n=1, prompt="tir-toolcall"), runner)
    stream = result.streams[0]
    assert runner.calls == ["print(6*7)\n"]
    assert engine.cancelled == [f"{PID}/0/0"]
    assert "41" not in stream.text
    assert result.answer == 42
    assert engine.num_running() == 0


def test_agreement_policy_cancels_every_other_stream_on_the_engine() -> None:
    s = seeds(12)
    fast = {seed: ["\\boxed{7}"] for seed in s[:4]}
    slow = {seed: ["thinking " * 400 + "\\boxed{9}"] for seed in s[4:]}
    engine = ReplayEngine({**fast, **slow}, tokens_per_s=200)
    result = solve(engine, config(policy="agree=4"))
    assert result.stop_reason.startswith("agreement")
    assert result.answer == 7
    assert engine.num_running() == 0
    assert sorted(engine.cancelled) == sorted(f"{PID}/{i}/0" for i in range(4, 12))
    assert [st.end for st in result.streams[4:]] == ["cancelled"] * 8
    assert result.vote.num_votes == 4  # cancelled streams do not vote


def test_quorum_policy_fires_at_q_finished() -> None:
    s = seeds(12)
    scripts = {seed: [f"\\boxed{{{i}}}"] for i, seed in enumerate(s[:10])}
    scripts.update({seed: ["slow " * 1000] for seed in s[10:]})
    engine = ReplayEngine(scripts, tokens_per_s=100)
    result = solve(engine, config(policy="quorum=10"))
    assert result.stop_reason.startswith("quorum")
    assert engine.num_running() == 0
    assert len(engine.cancelled) == 2


def test_deadline_cuts_streams_and_partial_answer_counts() -> None:
    s = seeds(3)
    partial = "First guess \\boxed{12}. Let me double check " + "carefully " * 2000
    engine = ReplayEngine({seed: [partial] for seed in s}, tokens_per_s=500)
    result = solve(engine, config(n=3), deadline_in=0.5)
    assert result.stop_reason == "deadline"
    assert result.answer == 12
    assert all(st.end == "deadline" for st in result.streams)
    assert engine.num_running() == 0


def test_engine_error_ends_one_stream_not_the_problem() -> None:
    s = seeds(2)
    engine = ReplayEngine({s[0]: ["\\boxed{3}"]})  # no script for the second seed: error delta
    result = solve(engine, config(n=2))
    assert result.answer == 3
    assert [st.end for st in result.streams] == ["stop", "error"]
    assert result.streams[1].error and "no replay script" in result.streams[1].error


def test_token_budget_is_shared_across_segments() -> None:
    seed = seeds(1)[0]
    first = ReplaySegment("```python\nprint(1)\n```", tokens=10)
    engine = ReplayEngine({seed: [first, "word " * 500]})
    cfg = config(n=1)
    cfg.solve.sampling.max_tokens = 100
    result = solve(engine, cfg, ScriptedRunner())
    stream = result.streams[0]
    assert stream.end == "length"
    assert engine.requests[1].max_tokens == 90
    assert stream.tokens == 100


def test_trace_replayed_gives_the_same_result(tmp_path: Path) -> None:
    s = seeds(4)
    scripts = {
        s[0]: ["Try code\n```python\nprint(3)\n```", " so \\boxed{3}"],
        s[1]: ["Direct: \\boxed{3}"],
        s[2]: ["Hmm \\boxed{5}"],
        s[3]: ["```python\nprint(3)\n```", "\\boxed{3}"],
    }
    runner = ScriptedRunner({"print(3)": ExecResult("ok", "3\n", "", 0.01)})
    trace = tmp_path / "trace.jsonl"
    with TraceWriter(trace) as tracer:
        first = solve(ReplayEngine(scripts), config(n=4), runner, tracer=tracer)
    events = list(read_trace(trace))
    assert events[0]["event"] == "problem_start"
    assert events[-1]["event"] == "problem_end"
    replayed = ReplayEngine.from_config(EngineConfig("replay", str(trace), {"problem_id": PID}))
    second = solve(replayed, config(n=4), runner)
    assert second.answer == first.answer == 3
    assert second.vote.counts == first.vote.counts
    assert [st.text for st in second.streams] == [st.text for st in first.streams]
    assert [st.tokens for st in second.streams] == [st.tokens for st in first.streams]


def test_nemo_preset_stops_when_four_of_first_five_agree() -> None:
    s = seeds(12)
    quick = [9, 9, 2, 9, 9]  # 4 of the first 5 finished agree
    scripts = {seed: ["x " * (i * 5) + f"\\boxed{{{a}}}"] for i, (seed, a) in
               enumerate(zip(s[:5], quick, strict=True))}
    scripts.update({seed: ["long " * 2000] for seed in s[5:]})
    engine = ReplayEngine(scripts, tokens_per_s=400)
    result = solve(engine, config(policy="nemo"))
    assert result.stop_reason.startswith("agreement: 4 of the first 5")
    assert result.answer == 9
    assert engine.num_running() == 0
    assert len(engine.cancelled) == 7


def test_stream_timeout_cuts_one_slow_stream_only() -> None:
    s = seeds(2)
    engine = ReplayEngine({s[0]: ["\\boxed{1}"], s[1]: ["\\boxed{1} and on " + "z " * 5000]},
                          tokens_per_s=200)
    cfg = config(n=2)
    cfg.solve.stream_timeout_s = 0.5
    result = solve(engine, cfg)
    assert [st.end for st in result.streams] == ["stop", "deadline"]
    assert result.stop_reason == "all finished"
    assert result.answer == 1 and result.vote.num_votes == 2  # the cut stream's partial answer
    assert engine.num_running() == 0


def test_cot_profile_needs_no_sandbox() -> None:
    s = seeds(2)
    engine = ReplayEngine({seed: ["```python\nprint(1)\n```\n\\boxed{8}"] for seed in s})

    async def go() -> ProblemResult:
        return await Controller(engine, None, config(n=2, prompt="cot")).solve(PID, "q")

    result = asyncio.run(go())
    assert result.answer == 8
    assert all(st.num_code_calls == 0 for st in result.streams)


@pytest.mark.parametrize("honour_stop", [True, False], ids=["engine-stops", "engine-misses"])
def test_imagined_output_is_dropped_and_the_model_told_no_code_ran(honour_stop: bool) -> None:
    seed = seeds(1)[0]
    imagined = "I recall the value.\n```output\n41\n```\nSo \\boxed{41}."
    engine = ReplayEngine({seed: [imagined, " Let me compute it: \\boxed{42}."]},
                          honour_stop=honour_stop)
    runner = ScriptedRunner()
    result = solve(engine, config(n=1), runner)
    stream = result.streams[0]
    assert runner.calls == []  # there was no code to run
    assert [c.status for c in stream.code_calls] == ["no_code"]
    assert stream.text.startswith("I recall the value.\n\n```output\n" + NO_CODE_FEEDBACK)
    assert "41" not in stream.text
    assert stream.end == "stop" and result.answer == 42
    assert engine.num_running() == 0


def test_a_py_tagged_block_before_an_output_block_is_run() -> None:
    seed = seeds(1)[0]
    engine = ReplayEngine({seed: ["Compute:\n```py\nprint(6*7)\n```\n```output\n41\n```",
                                  " so \\boxed{42}."]})
    runner = ScriptedRunner({"print(6*7)": ExecResult("ok", "42\n", "", 0.01)})
    result = solve(engine, config(n=1), runner)
    stream = result.streams[0]
    assert runner.calls == ["print(6*7)\n"]
    assert stream.code_calls[0].feedback == "42"
    assert "```py\nprint(6*7)\n```\n```output\n42\n```\n so \\boxed{42}." in stream.text
    assert result.answer == 42


@pytest.mark.parametrize(("before", "expected"), [("", None), ("Guess \\boxed{3}. ", 3)],
                         ids=["no-model-box", "model-box-before-code"])
def test_answers_come_from_the_model_not_from_code_or_its_output(
    before: str, expected: int | None
) -> None:
    seed = seeds(1)[0]
    code = "print('\\\\boxed{5}')"
    engine = ReplayEngine({seed: [f"{before}Check:\n```python\n{code}\n```", " Done."]})
    runner = ScriptedRunner({code: ExecResult("ok", "\\boxed{5}\n", "", 0.01)})
    result = solve(engine, config(n=1), runner)
    assert runner.calls == [code + "\n"]
    assert "\\boxed{5}" in result.streams[0].text
    assert result.answer == expected


def test_a_resumed_trace_replays_the_last_attempt(tmp_path: Path) -> None:
    """A run killed mid-problem and resumed writes the problem twice; the replay engine uses
    the last attempt (the killed one made a code call the finished one did not)."""
    s = seeds(2)
    killed = {s[0]: ["Try\n```python\nprint(3)\n```", " so \\boxed{3}"], s[1]: ["\\boxed{3}"]}
    final = {s[0]: ["Direct: \\boxed{4}"], s[1]: ["Also \\boxed{4}"]}
    runner = ScriptedRunner({"print(3)": ExecResult("ok", "3\n", "", 0.01)})
    trace = tmp_path / "trace.jsonl"
    with TraceWriter(trace) as tracer:
        solve(ReplayEngine(killed), config(n=2), runner, tracer=tracer)
    lines = trace.read_text().splitlines(keepends=True)
    first_code = next(i for i, ln in enumerate(lines) if '"event": "code"' in ln)
    trace.write_text("".join(lines[: first_code + 1]))  # killed right after the code cell
    with TraceWriter(trace) as tracer:
        ran = solve(ReplayEngine(final), config(n=2), runner, tracer=tracer)
    replayed = ReplayEngine.from_config(EngineConfig("replay", str(trace), {"problem_id": PID}))
    again = solve(replayed, config(n=2), runner)
    assert [st.num_code_calls for st in again.streams] == [0, 0]
    assert [st.text for st in again.streams] == [st.text for st in ran.streams]
    assert again.answer == ran.answer == 4
