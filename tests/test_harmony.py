"""The harmony profile with the real openai-harmony encoder (offline vocabulary) and real sandbox.

Completions are built with the encoder itself, as gpt-oss would emit them, and replayed token by
token through the solve loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

openai_harmony = pytest.importorskip("openai_harmony")
pytest.importorskip("bpe_openai")

from openai_harmony import Conversation, Message, Role  # noqa: E402

from aimo_infer.backends.base import EngineInfo, EngineUnavailable  # noqa: E402
from aimo_infer.backends.replay import ReplayEngine, ReplaySegment  # noqa: E402
from aimo_infer.config import Config, HarmonyConfig  # noqa: E402
from aimo_infer.runtime import harness  # noqa: E402
from aimo_infer.solve.controller import Controller, ProblemResult, stream_seed  # noqa: E402
from aimo_infer.solve.harmony import (  # noqa: E402
    MALFORMED,
    HarmonyRenderer,
    answer_text,
    final_text,
    load_encoding,
)
from aimo_infer.vocab import ENV_VAR, use_offline_vocab  # noqa: E402

PROBLEM = "What is 6 times 7?"


@pytest.fixture(scope="module", autouse=True)
def offline_vocab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The vocabulary unpacked from bpe-openai into a fresh cache: nothing is downloaded."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        use_offline_vocab(tmp_path_factory.mktemp("cache"))
        yield


@pytest.fixture(scope="module")
def renderer() -> HarmonyRenderer:
    from aimo_infer.solve.prompts import load_profile

    return HarmonyRenderer(HarmonyConfig(), load_profile("harmony").user, load_encoding())


def assistant(text: str, channel: str = "analysis", to: str | None = None) -> Message:
    msg = Message.from_role_and_content(Role.ASSISTANT, text).with_channel(channel)
    return msg.with_recipient(to).with_content_type("code") if to else msg


def completion(r: HarmonyRenderer, *messages: Message, end: str | None = None) -> list[int]:
    """What the model generates after the prompt's ``<|start|>assistant``: the messages as the
    encoder renders them, the first without its header start, ``<|end|>`` swapped for ``end``."""
    ids: list[int] = []
    for msg in messages:
        ids += r.encoding.render(msg)
    ids = ids[len(r.assistant_start):]
    if end is not None:
        ids[-1] = r.encoding.encode(end, allowed_special="all")[0]
    return ids


def harmony_config(streams: int = 1) -> Config:
    cfg = Config()
    cfg.solve.prompt = "harmony"
    cfg.solve.num_streams = streams
    cfg.solve.stop_policy = "all"
    cfg.solve.sampling.max_tokens = 2000
    return cfg


def solve(cfg: Config, engine: ReplayEngine) -> ProblemResult:
    async def go() -> ProblemResult:
        async with harness(cfg, engine=engine) as controller:
            return await controller.solve("p", PROBLEM)

    return asyncio.run(go())


def test_the_prompt_renders_system_effort_tool_and_problem(renderer: HarmonyRenderer) -> None:
    ids = renderer.render(renderer.messages(PROBLEM))
    text = renderer.decode(ids)
    assert text.startswith("<|start|>system<|message|>")
    assert "Reasoning: high" in text and "## python" in text
    assert PROBLEM in text and text.endswith("<|start|>assistant")
    custom = HarmonyRenderer(
        HarmonyConfig(reasoning_effort="medium", system_prompt="The answer is an integer.",
                      tool_description="Runs Python 3 with sympy."),
        "{problem}", renderer.encoding)
    text = custom.decode(custom.render(custom.messages(PROBLEM)))
    assert "Reasoning: medium" in text and "The answer is an integer." in text
    assert "Runs Python 3 with sympy." in text and "You are ChatGPT" not in text
    assert "<|start|>developer" not in text
    with pytest.raises(ValueError, match="reasoning_effort"):
        HarmonyRenderer(HarmonyConfig(reasoning_effort="max"), "{problem}", renderer.encoding)


def test_a_tool_call_runs_in_the_sandbox_and_the_final_channel_answers(
    renderer: HarmonyRenderer,
) -> None:
    seed = stream_seed(0, "p", 0)
    thought = assistant("Guess \\boxed{41}? Better compute it.")
    call = assistant("import math\nx = 6 * 7\nx", to="python")
    first = completion(renderer, thought, call)  # ends with <|call|>
    final = [assistant("The tool says 42."), assistant("The answer is **42**.", "final")]
    second = completion(renderer, *final, end="<|return|>")
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(first)),
                                  ReplaySegment("", token_ids=tuple(second))]})
    result = solve(harmony_config(), engine)
    (stream,) = result.streams
    assert stream.end == "stop" and stream.error is None
    assert [(c.status, c.feedback) for c in stream.code_calls] == [("ok", "42")]  # notebook value
    assert result.answer == 42  # the final channel's, not the analysis' \boxed{41}
    # Token in: the resumed prompt is exactly the re-rendered conversation, and it extends the
    # first prompt by the generated ids and the tool message.
    req1, req2 = engine.requests
    tool = renderer.tool_message("42", "analysis")
    rerendered = renderer.render([*renderer.messages(PROBLEM), thought, call, tool])
    assert list(req2.prompt_token_ids or ()) == rerendered
    assert list(req2.prompt_token_ids or ())[: len(req1.prompt_token_ids or ()) + len(first)] \
        == [*(req1.prompt_token_ids or ()), *first]
    assert set(req1.stop_token_ids) == set(renderer.encoding.stop_tokens_for_assistant_actions())
    assert req1.prompt is None and req1.temperature == Config().solve.sampling.temperature
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42<|end|>" in stream.text


def test_state_persists_across_calls_and_errors_are_shown(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    segments = [
        completion(renderer, assistant("n = 7", to="python")),
        completion(renderer, assistant("print(n * 6)", to="python")),
        completion(renderer, assistant("1/0", to="python")),
        completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>"),
    ]
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(s)) for s in segments]})
    result = solve(harmony_config(), engine)
    calls = result.streams[0].code_calls
    assert [c.status for c in calls] == ["ok", "ok", "error"]
    assert calls[0].feedback.startswith("[no output")
    assert calls[1].feedback == "42"
    assert "ZeroDivisionError" in calls[2].feedback
    assert result.answer == 42


def test_tokens_after_return_are_dropped_with_a_record(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    answer = completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>")
    junk = renderer.encoding.encode(" and then \\boxed{13}", allowed_special="all")
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=(*answer, *junk))]},
                          honour_stop=False)
    result = solve(harmony_config(), engine)
    stream = result.streams[0]
    assert stream.end == "stop" and result.answer == 42
    assert stream.error is not None and stream.error.startswith(MALFORMED)
    assert "\\boxed{13}" not in stream.text
    assert engine.cancelled == [stream.request_id]  # the engine was told to stop


def test_an_unknown_recipient_is_answered_and_the_stream_goes_on(
    renderer: HarmonyRenderer,
) -> None:
    seed = stream_seed(0, "p", 0)
    segments = [
        completion(renderer, assistant("search('6*7')", to="browser.search")),
        completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>"),
    ]
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(s)) for s in segments]})
    result = solve(harmony_config(), engine)
    (call,) = result.streams[0].code_calls
    assert call.status == "unknown_recipient" and "only tool is python" in call.feedback
    assert result.answer == 42 and result.streams[0].end == "stop"


@pytest.mark.parametrize(
    ("text", "finish"),
    [
        ("<|channel|>final<|message|>\\boxed{42}", "stop"),  # a message without end
        ("<|channel|>analysis<|message|>x<|end|>stray text \\boxed{42}", "stop"),  # no <|start|>
        ("<|start|><|start|>", "stop"),  # a header that never completes
    ],
)
def test_malformed_streams_end_cleanly_with_a_record(
    renderer: HarmonyRenderer, text: str, finish: str
) -> None:
    seed = stream_seed(0, "p", 0)
    ids = renderer.encoding.encode(text, allowed_special="all")
    engine = ReplayEngine({seed: [ReplaySegment("", finish_reason=finish,  # type: ignore[arg-type]
                                                token_ids=tuple(ids))]})
    result = solve(harmony_config(), engine)
    stream = result.streams[0]
    assert stream.end == "error"
    assert stream.error is not None and stream.error.startswith(MALFORMED)
    assert len(engine.requests) == 1
    if "42" in text:  # the partial text still votes
        assert result.answer == 42


def test_the_tool_turn_limit_ends_the_stream(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    call = completion(renderer, assistant("print(1)", to="python"))
    cfg = harmony_config()
    cfg.solve.harmony.max_tool_turns = 2
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(call))] * 5})
    result = solve(cfg, engine)
    stream = result.streams[0]
    assert stream.end == "code_limit" and stream.num_code_calls == 2
    assert len(engine.requests) == 3


def test_the_per_call_timeout_applies(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    segments = [completion(renderer, assistant("while True:\n    pass", to="python")),
                completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>")]
    cfg = harmony_config()
    cfg.solve.harmony.code_timeout_s = 0.5
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(s)) for s in segments]})
    result = solve(cfg, engine)
    assert result.streams[0].code_calls[0].status == "timeout"
    assert result.answer == 42


def test_an_engine_without_token_io_is_refused_at_start() -> None:
    class TextOnly(ReplayEngine):
        @property
        def info(self) -> EngineInfo:
            return EngineInfo("textonly", "m", 4096)

    with pytest.raises(EngineUnavailable, match="token-in/token-out"):
        Controller(TextOnly({}), object(), harmony_config())  # type: ignore[arg-type]


def test_final_text_reads_the_last_final_message() -> None:
    text = ("<|channel|>analysis<|message|>\\boxed{1}<|end|><|start|>assistant<|channel|>final"
            "<|message|>**2**<|return|>")
    assert final_text(text) == "**2**"
    assert final_text("<|channel|>analysis<|message|>cut") is None
    assert answer_text("<|channel|>analysis<|message|>cut") == "<|channel|>analysis<|message|>cut"


def test_conversation_round_trip_of_a_completion(renderer: HarmonyRenderer) -> None:
    """The completions the tests build parse back into the messages they came from."""
    msgs = [assistant("think"), assistant("print(1)", to="python")]
    parsed = renderer.encoding.parse_messages_from_completion_tokens(
        completion(renderer, *msgs), Role.ASSISTANT)
    assert [m.to_dict() for m in parsed] == [m.to_dict() for m in msgs]
    assert Conversation.from_messages(parsed)


def test_the_model_s_own_call_header_form_is_understood(renderer: HarmonyRenderer) -> None:
    """gpt-oss writes the recipient after the channel (``<|channel|>analysis to=python code``)."""
    seed = stream_seed(0, "p", 0)
    first = renderer.encoding.encode(
        "<|channel|>analysis<|message|>Compute.<|end|><|start|>assistant<|channel|>analysis "
        "to=python code<|message|>print(6 * 7)<|call|>", allowed_special="all")
    second = completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>")
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(first)),
                                  ReplaySegment("", token_ids=tuple(second))]})
    result = solve(harmony_config(), engine)
    assert [(c.code, c.feedback) for c in result.streams[0].code_calls] == [("print(6 * 7)", "42")]
    assert result.answer == 42
    req1, req2 = engine.requests
    assert (req2.prompt_token_ids or ())[: len(req1.prompt_token_ids or ()) + len(first)] == \
        (*(req1.prompt_token_ids or ()), *first)  # the model's own tokens, not a re-render


def test_through_the_openai_adapter_on_a_vllm_shaped_server(renderer: HarmonyRenderer) -> None:
    """The recipe's engine path: token prompts, stop token ids and returned ids over HTTP (the
    vLLM-shaped server of tests/test_token_io.py, here streaming the model's two turns), the
    real sandbox."""
    pytest.importorskip("httpx")
    from typing import Any

    from aimo_infer.backends.openai import OpenAIEngine
    from aimo_infer.config import EngineConfig
    from tests.test_token_io import _serve

    segments = [
        completion(renderer, assistant("x = 6 * 7\nx", to="python")),
        completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>"),
    ]

    class TwoTurns:
        """Each request streams the next turn's ids; vLLM leaves the stop id to stop_reason."""

        def __init__(self) -> None:
            self.bodies: list[dict[str, Any]] = []

        def frames(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
            for n, token in enumerate(segments[len(self.bodies) - 1], 1):
                last = token in body["stop_token_ids"]
                yield {"choices": [{"index": 0, "text": "", "token_ids": [] if last else [token],
                                    "finish_reason": "stop" if last else None,
                                    "stop_reason": token if last else None}],
                       "usage": {"completion_tokens": n}}

    stand_in = TwoTurns()
    server = _serve(stand_in)  # type: ignore[arg-type]
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        engine = OpenAIEngine.from_config(EngineConfig("openai", options={"base_url": url}))
        result = solve(harmony_config(), engine)  # type: ignore[arg-type]
    finally:
        server.shutdown()
        server.server_close()
    stream = result.streams[0]
    assert stream.end == "stop" and stream.error is None and result.answer == 42
    assert [c.feedback for c in stream.code_calls] == ["42"]
    first, second = stand_in.bodies
    assert isinstance(first["prompt"], list) and first["return_token_ids"] is True
    assert second["prompt"][: len(first["prompt"]) + len(segments[0])] == \
        first["prompt"] + segments[0]
    assert stream.tokens == len(segments[0]) + len(segments[1])


def test_a_deadline_cut_answers_from_the_partial_text(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    thinking = "So the answer should be \\boxed{42}. Let me double-check everything." + \
        " Checking again." * 400
    ids = completion(renderer, assistant(thinking))
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(ids))]}, tokens_per_s=500)

    async def go() -> ProblemResult:
        import time

        async with harness(harmony_config(), engine=engine) as controller:
            return await controller.solve("p", PROBLEM, time.monotonic() + 0.5)

    result = asyncio.run(go())
    stream = result.streams[0]
    assert result.stop_reason == "deadline" and stream.end == "deadline"
    assert stream.error is None  # a cut stream is not malformed
    assert stream.tokens < len(ids) and result.answer == 42


def test_a_token_limit_mid_message_is_length_not_malformed(renderer: HarmonyRenderer) -> None:
    seed = stream_seed(0, "p", 0)
    ids = completion(renderer, assistant("A long thought " * 50))
    cfg = harmony_config()
    cfg.solve.sampling.max_tokens = 20
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(ids))]})
    stream = solve(cfg, engine).streams[0]
    assert stream.end == "length" and stream.error is None and stream.tokens == 20


def test_a_harmony_trace_replays_to_the_same_solve(renderer: HarmonyRenderer,
                                                   tmp_path: Path) -> None:
    from aimo_infer.config import EngineConfig
    from aimo_infer.traces import TraceWriter

    seed = stream_seed(0, "p", 0)
    segments = [completion(renderer, assistant("print(6 * 7)", to="python")),
                completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>")]
    engine = ReplayEngine({seed: [ReplaySegment("", token_ids=tuple(s)) for s in segments]})
    trace = tmp_path / "trace.jsonl"

    async def go(engine: ReplayEngine, tracer: TraceWriter | None) -> ProblemResult:
        async with harness(harmony_config(), tracer=tracer, engine=engine) as controller:
            return await controller.solve("p", PROBLEM)

    with TraceWriter(trace) as tracer:
        first = asyncio.run(go(engine, tracer))
    replayed = asyncio.run(go(ReplayEngine.from_config(EngineConfig("replay", str(trace))), None))
    assert first.answer == replayed.answer == 42
    assert replayed.streams[0].text == first.streams[0].text
    assert [c.feedback for c in replayed.streams[0].code_calls] == ["42"]


def test_harmony_streams_carry_confidence_for_the_entropy_vote(renderer: HarmonyRenderer) -> None:
    """The AIMO-3 recipe votes by entropy: Harmony streams must ask for logprobs and keep the
    confidence of every generated token (tool replies are not generated, so they do not count)."""
    seeds = [stream_seed(0, "p", i) for i in range(2)]
    call = completion(renderer, assistant("print(6 * 7)", to="python"))
    final = completion(renderer, assistant("\\boxed{42}", "final"), end="<|return|>")
    engine = ReplayEngine({s: [ReplaySegment("", token_ids=tuple(call)),
                               ReplaySegment("", token_ids=tuple(final))] for s in seeds})
    cfg = harmony_config(streams=2)
    cfg.solve.select = "entropy"  # asks for 5 logprobs by itself
    result = solve(cfg, engine)
    assert all(r.logprobs == 5 for r in engine.requests)
    for stream in result.streams:
        assert stream.confidence is not None
        assert stream.confidence["tokens"] == len(call) + len(final) == stream.tokens
    assert result.answer == 42 and result.vote.rule == "entropy"
