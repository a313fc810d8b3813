"""OpenAI-compatible HTTP engine: request bodies, stop handling, routing, and real servers.

Two kinds of server answer on loopback: a small stand-in that streams the frames vLLM's
completion protocol documents (``stop_reason``, per-chunk usage), for what cannot run here
(vLLM, trtllm-serve), and the real llama-cpp-python server with SmolLM2 (slow tests).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

pytest.importorskip("httpx")

from aimo_infer.backends.base import EngineError, EngineUnavailable, GenerationRequest
from aimo_infer.backends.openai import (
    FLAVOURS,
    OpenAIEngine,
    OpenAIOptions,
    finish_reason,
    request_body,
    stop_to_append,
)
from aimo_infer.config import EngineConfig

WORDS = ["alpha", " beta", " STOP", " gamma", " delta"]


@dataclass
class StandIn:
    """A vLLM-shaped completions server: records bodies, streams WORDS, honours stop strings."""

    owned_by: str = "vllm"
    delay_s: float = 0.0  # pause between chunks (a slow stream, for cancel and routing)
    bodies: list[dict[str, Any]] = field(default_factory=list)
    disconnects: int = 0
    server: ThreadingHTTPServer | None = None
    # Misbehaviour, as real servers show it: a status that refuses the request (vLLM's 503 when
    # its queue is full, a proxy's 429), raw frames in place of the documented ones, and a
    # connection held open after the finish chunk (no [DONE] until ``release`` is set).
    status: int = 200
    retry_after: str | None = None
    raw_frames: list[str] | None = None
    hold_open: bool = False
    release: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def frames(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        stops = body.get("stop") or []
        limit = body["max_tokens"]
        done = 0
        for word in (WORDS * 50)[:limit]:
            if word.strip() in [s.strip() for s in stops]:  # the server strips the stop text
                yield self._chunk("", done, "stop", word)
                return
            done += 1
            yield self._chunk(word, done, None, None)
        yield self._chunk("", done, "length", None)

    @staticmethod
    def _chunk(text: str, done: int, finish: str | None, stop: str | None) -> dict[str, Any]:
        return {"object": "text_completion", "choices": [
            {"index": 0, "text": text, "finish_reason": finish, "stop_reason": stop}],
            "usage": {"prompt_tokens": 3, "completion_tokens": done, "total_tokens": 3 + done}}


def _handler(stand_in: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_GET(self) -> None:
            payload = {"object": "list", "data": [
                {"id": "stand-in", "object": "model", "owned_by": stand_in.owned_by, "max_model_len": 4096}]}
            raw = json.dumps(payload).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stand_in.bodies.append(body)
            if stand_in.status != 200:
                raw = b'{"error": "server busy"}'
                self.send_response(stand_in.status)
                if stand_in.retry_after is not None:
                    self.send_header("Retry-After", stand_in.retry_after)
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            try:
                frames = stand_in.raw_frames or [json.dumps(f) for f in stand_in.frames(body)]
                for frame in frames:
                    self.wfile.write(f"data: {frame}\n\n".encode())
                    self.wfile.flush()
                    if stand_in.delay_s:
                        threading.Event().wait(stand_in.delay_s)
                if stand_in.hold_open:
                    stand_in.release.wait(30)
                self.wfile.write(b"data: [DONE]\n\n")
                self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                stand_in.disconnects += 1

    return Handler


@pytest.fixture
def stand_ins() -> Iterator[list[StandIn]]:
    servers = [StandIn(), StandIn()]
    threads = []
    for s in servers:
        s.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(s))
        s.server.daemon_threads = True
        threads.append(threading.Thread(target=s.server.serve_forever, daemon=True))
        threads[-1].start()
    yield servers
    for s, t in zip(servers, threads, strict=True):
        s.release.set()
        assert s.server is not None
        s.server.shutdown()
        s.server.server_close()
        t.join()


def _engine(urls: list[str], **options: Any) -> OpenAIEngine:
    return OpenAIEngine.from_config(EngineConfig(name="openai", options={"base_urls": urls, **options}))


async def _collect(engine: OpenAIEngine, request: GenerationRequest) -> tuple[str, int, str | None]:
    text, tokens, finish = "", 0, None
    async for delta in engine.generate(request):
        text, tokens, finish = text + delta.text, tokens + delta.num_tokens, delta.finish_reason
    return text, tokens, finish


def test_request_body_follows_the_server_flavour() -> None:
    req = GenerationRequest("r", prompt="Hi", seed=9, stop=("```output",), max_tokens=7)
    vllm = request_body(req, "m", FLAVOURS["vllm"])
    assert vllm["stop"] == ["```output"] and vllm["seed"] == 9 and vllm["max_tokens"] == 7
    assert vllm["top_k"] == 0 and vllm["stream"] is True and vllm["stream_options"]["include_usage"]
    llama = request_body(req, "m", FLAVOURS["llama-cpp-python"])
    assert "stop" not in llama  # matched by the adapter: this server cannot say which stop hit
    assert llama["top_k"] == 0 and llama["min_p"] == 0.0 and llama["repeat_penalty"] == 1.0
    generic = request_body(req, "m", FLAVOURS["generic"])
    assert "top_k" not in generic and "min_p" not in generic and "stream_options" not in generic
    ids = GenerationRequest("r", prompt_token_ids=(1, 2, 3))
    assert request_body(ids, "m", FLAVOURS["vllm"])["prompt"] == [1, 2, 3]
    with pytest.raises(EngineError, match="token-id prompts"):
        request_body(ids, "m", FLAVOURS["llama-cpp-python"])


def test_stop_append_rule_and_finish_mapping() -> None:
    stops = ("```output", "</s>")
    assert stop_to_append("x = 1\n", "stop", {"stop_reason": "```output"}, stops) == "```output"
    assert stop_to_append("x```output", "stop", {"stop_reason": "```output"}, stops) == ""
    assert stop_to_append("x", "stop", {"matched_stop": "</s>"}, stops) == "</s>"
    assert stop_to_append("x", "stop", {"stop_reason": None}, stops) == ""  # end of sequence
    assert stop_to_append("x", "stop", {"stop_reason": 2}, stops) == ""  # a stop token id
    assert stop_to_append("x", "length", {"stop_reason": "</s>"}, stops) == ""
    assert [finish_reason(r) for r in ("stop", "length", "abort", "content_filter", None)] == [
        "stop", "length", "cancelled", "error", None]


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="base_url"):
        OpenAIOptions.parse({})
    with pytest.raises(ValueError, match="unknown option"):
        OpenAIOptions.parse({"base_url": "http://x", "urls": []})
    with pytest.raises(ValueError, match="routing"):
        OpenAIOptions.parse({"base_url": "http://x", "routing": "random"})
    opts = OpenAIOptions.parse({"base_url": "http://a:1/", "base_urls": ["http://b:2/v1"]})
    assert opts.urls == ("http://a:1/v1", "http://b:2/v1")


def test_unreachable_server_is_a_clear_error() -> None:
    with pytest.raises(EngineUnavailable, match="cannot list models"):
        _engine(["http://127.0.0.1:9"], connect_timeout_s=1.0)


def test_info_and_server_stop_strings(stand_ins: list[StandIn]) -> None:
    engine = _engine([stand_ins[0].url])
    assert engine.info.model == "stand-in" and engine.info.context_length == 4096
    assert engine.info.extra["server"] == "vllm"

    async def body() -> None:
        text, tokens, finish = await _collect(engine, GenerationRequest("a", prompt="p", stop=(" STOP",)))
        assert (text, tokens, finish) == ("alpha beta STOP", 2, "stop")
        text, tokens, finish = await _collect(engine, GenerationRequest("b", prompt="p", max_tokens=2))
        assert (text, tokens, finish) == ("alpha beta", 2, "length")
        ids = await _collect(engine, GenerationRequest("c", prompt_token_ids=(5, 6), max_tokens=1))
        assert ids == ("alpha", 1, "length")
        await engine.shutdown()

    asyncio.run(body())
    assert stand_ins[0].bodies[0]["stop"] == [" STOP"]
    assert stand_ins[0].bodies[2]["prompt"] == [5, 6]


def test_client_side_stop_closes_the_stream(stand_ins: list[StandIn]) -> None:
    """A server that cannot report the matched stop never sees it; the adapter cuts and closes."""
    stand_ins[0].delay_s = 0.05
    engine = _engine([stand_ins[0].url], server="generic")

    async def body() -> None:
        text, _, finish = await _collect(engine, GenerationRequest("a", prompt="p", stop=("ta S",), max_tokens=200))
        assert (text, finish) == ("alpha beta S", "stop")
        await engine.shutdown()

    asyncio.run(body())
    assert "stop" not in stand_ins[0].bodies[0]


def test_cancel_closes_the_connection(stand_ins: list[StandIn]) -> None:
    stand_ins[0].delay_s = 0.05
    engine = _engine([stand_ins[0].url])

    async def body() -> None:
        stream = engine.generate(GenerationRequest("a", prompt="p", max_tokens=200))
        first = await stream.__anext__()
        assert first.text == "alpha" and engine.num_running() == 1
        await engine.cancel("a")
        assert [d.finish_reason async for d in stream] == ["cancelled"]
        assert engine.num_running() == 0 and engine.in_flight() == {stand_ins[0].url + "/v1": 0}
        await engine.shutdown()

    asyncio.run(body())
    for _ in range(100):  # the server notices the closed socket at its next write
        if stand_ins[0].disconnects:
            break
        threading.Event().wait(0.05)
    assert stand_ins[0].disconnects == 1


@pytest.mark.parametrize("routing", ["round-robin", "least-loaded"])
def test_requests_spread_over_servers(stand_ins: list[StandIn], routing: str) -> None:
    for s in stand_ins:
        s.delay_s = 0.02
    engine = _engine([s.url for s in stand_ins], routing=routing)

    async def body() -> None:
        results = await asyncio.gather(*[
            _collect(engine, GenerationRequest(f"r{i}", prompt="p", max_tokens=5)) for i in range(6)])
        assert all(r[2] == "length" for r in results)
        await engine.shutdown()

    asyncio.run(body())
    assert [len(s.bodies) for s in stand_ins] == [3, 3]


def test_a_dead_server_is_skipped(stand_ins: list[StandIn]) -> None:
    engine = _engine([stand_ins[0].url])
    engine._endpoints.insert(0, type(engine._endpoints[0])("http://127.0.0.1:9/v1"))

    async def body() -> None:
        results = [await _collect(engine, GenerationRequest(f"r{i}", prompt="p", max_tokens=2)) for i in range(2)]
        assert results == [("alpha beta", 2, "length")] * 2
        await engine.shutdown()

    asyncio.run(body())


# --- the real llama-cpp-python server ---------------------------------------------------------


@pytest.mark.slow
def test_llama_server_flavour_and_concurrent_requests(llama_server: Any) -> None:
    engine = _engine([llama_server.base_url], context_length=llama_server.context_length)
    assert engine.info.extra["server"] == "llama-cpp-python"
    prompt = "<|im_start|>user\nName three colours.<|im_end|>\n<|im_start|>assistant\n"

    async def body() -> None:
        results = await asyncio.gather(*[
            _collect(engine, GenerationRequest(f"r{i}", prompt=prompt, seed=i, max_tokens=8, temperature=1.0))
            for i in range(3)])
        # At temperature 1 a sampled end-of-text may come before the limit: both ends are
        # right, and each must be consistent with its token count.
        for text, tokens, finish in results:
            assert finish in ("length", "stop") and 0 < tokens <= 8, (text, tokens, finish)
            assert finish == "stop" or tokens == 8, (text, tokens, finish)
        ids = [d async for d in engine.generate(GenerationRequest("ids", prompt_token_ids=(1, 2)))]
        assert ids[-1].finish_reason == "error" and "token-id" in (ids[-1].error or "")
        await engine.shutdown()

    asyncio.run(body())


# --- misbehaving servers ------------------------------------------------------------------------

LIVENESS_S = 10.0  # a hang would last the read timeout (600 s) or for ever; no timing asserted


def _chunk(choice: object) -> str:
    return json.dumps({"choices": [choice]})


@pytest.mark.parametrize(
    "frame",
    ["null", "[1, 2]", '"text"', "5", '{"choices": {"0": {"text": "a"}}}', '{"choices": [null]}',
     _chunk({"index": 0, "text": 5}), _chunk({"index": 0, "text": "a", "finish_reason": 1}),
     _chunk({"index": 1, "text": "a"}), _chunk({"index": "0", "text": "a"}),
     '{"choices": [], "usage": [3]}', "{not json"],
    ids=["null", "list", "string", "number", "choices-object", "choice-null", "text-number",
         "finish-number", "choice-index-1", "choice-index-string", "usage-list", "not-json"],
)
def test_a_frame_of_an_unexpected_shape_ends_the_request_at_once(
    stand_ins: list[StandIn], frame: str
) -> None:
    stand_ins[0].raw_frames = [_chunk({"index": 0, "text": "So "}), frame,
                               _chunk({"index": 0, "text": "more"})]
    stand_ins[0].hold_open = True
    engine = _engine([stand_ins[0].url])

    async def body() -> tuple[str, int, str | None]:
        result = await asyncio.wait_for(_collect(engine, GenerationRequest("a", prompt="p")),
                                        LIVENESS_S)
        assert engine.num_running() == 0
        await engine.shutdown()
        return result

    text, _, finish = asyncio.run(body())
    assert (text, finish) == ("So ", "error")


def test_a_finish_chunk_is_delivered_without_waiting_for_done(stand_ins: list[StandIn]) -> None:
    """The server keeps the connection open after its finish chunk; the answer comes anyway."""
    stand_ins[0].raw_frames = [_chunk({"index": 0, "text": "\\boxed{7}"}),
                               _chunk({"index": 0, "text": ".", "finish_reason": "stop"})]
    stand_ins[0].hold_open = True
    engine = _engine([stand_ins[0].url])

    async def body() -> tuple[str, int, str | None]:
        result = await asyncio.wait_for(_collect(engine, GenerationRequest("a", prompt="p")),
                                        LIVENESS_S)
        await engine.shutdown()
        return result

    assert asyncio.run(body()) == ("\\boxed{7}.", 2, "stop")
    assert not stand_ins[0].release.is_set()  # answered while the server still held [DONE]


def test_the_engine_starts_with_the_servers_that_answer(stand_ins: list[StandIn]) -> None:
    engine = _engine(["http://127.0.0.1:9", stand_ins[0].url], connect_timeout_s=1.0)
    assert engine.info.extra["endpoints"] == [stand_ins[0].url + "/v1"]

    async def body() -> tuple[str, int, str | None]:
        result = await _collect(engine, GenerationRequest("a", prompt="p", max_tokens=2))
        await engine.shutdown()
        return result

    assert asyncio.run(body()) == ("alpha beta", 2, "length")


@pytest.mark.parametrize(("status", "retry_after"), [(503, "1"), (503, None), (429, "0"),
                                                     (429, None), (502, None)])
def test_a_refused_request_goes_to_the_next_server_which_is_then_preferred(
    stand_ins: list[StandIn], status: int, retry_after: str | None
) -> None:
    """Least-loaded routing would send every request to the refusing server (it holds none
    for long); after a refusal it is tried last, so it sees one request, not six."""
    busy, healthy = stand_ins
    engine = _engine([busy.url, healthy.url])
    busy.status, busy.retry_after = status, retry_after

    async def body() -> list[tuple[str, int, str | None]]:
        results = [await _collect(engine, GenerationRequest(f"r{i}", prompt="p", max_tokens=2))
                   for i in range(6)]
        await engine.shutdown()
        return results

    assert asyncio.run(body()) == [("alpha beta", 2, "length")] * 6
    assert (len(busy.bodies), len(healthy.bodies)) == (1, 6)


def test_every_server_refusing_is_an_error_after_a_second_pass(stand_ins: list[StandIn]) -> None:
    for s in stand_ins:
        s.status, s.retry_after = 503, "0"
    engine = _engine([s.url for s in stand_ins])

    async def body() -> tuple[str, int, str | None]:
        result = await _collect(engine, GenerationRequest("a", prompt="p"))
        await engine.shutdown()
        return result

    assert asyncio.run(body()) == ("", 0, "error")
    assert [len(s.bodies) for s in stand_ins] == [2, 2]


def test_a_connect_timeout_goes_to_the_next_server(stand_ins: list[StandIn]) -> None:
    httpx = pytest.importorskip("httpx")
    engine = _engine([stand_ins[0].url, stand_ins[1].url])
    timing_out = stand_ins[0].server.server_address[1]  # type: ignore[union-attr]

    class Transport(httpx.AsyncBaseTransport):
        """A route that drops SYNs: httpx raises ConnectTimeout (httpx/_transports/default.py)."""

        def __init__(self) -> None:
            self.real = httpx.AsyncHTTPTransport()

        async def handle_async_request(self, request: Any) -> Any:
            if request.url.port == timing_out:
                raise httpx.ConnectTimeout("timed out", request=request)
            return await self.real.handle_async_request(request)

    async def body() -> list[tuple[str, int, str | None]]:
        engine._client_obj = httpx.AsyncClient(transport=Transport())
        engine._client_loop = asyncio.get_running_loop()
        results = [await _collect(engine, GenerationRequest(f"r{i}", prompt="p", max_tokens=2))
                   for i in range(3)]
        await engine.shutdown()
        return results

    assert asyncio.run(body()) == [("alpha beta", 2, "length")] * 3
    assert (len(stand_ins[0].bodies), len(stand_ins[1].bodies)) == (0, 3)


def test_a_failing_server_is_tried_last_after_its_error(stand_ins: list[StandIn]) -> None:
    """HTTP 500 is an error for that request (not retried: it may be the request's fault),
    but the server that answered it is not chosen first again for a while."""
    failing, healthy = stand_ins
    failing.status = 500
    engine = _engine([failing.url, healthy.url])

    async def body() -> list[str | None]:
        finishes = [(await _collect(engine, GenerationRequest(f"r{i}", prompt="p",
                                                              max_tokens=2)))[2]
                    for i in range(4)]
        await engine.shutdown()
        return finishes

    assert asyncio.run(body()) == ["error", "length", "length", "length"]
    assert (len(failing.bodies), len(healthy.bodies)) == (1, 3)


def test_choice_logprobs_parse_sort_and_cut() -> None:
    from aimo_infer.backends.openai import choice_logprobs

    # vLLM with return_tokens_as_token_ids: ids; top_logprobs unsorted and holding the sampled
    # token past the top k.
    choice = {"text": " x", "logprobs": {
        "tokens": ["token_id:5", "token_id:9"], "token_logprobs": [-0.2, -3.0],
        "top_logprobs": [{"token_id:7": -2.0, "token_id:5": -0.2},
                         {"token_id:4": -0.5, "token_id:3": -1.0, "token_id:9": -3.0}]}}  # fmt: skip
    first, second = choice_logprobs(choice, 2)
    assert (first.token, first.logprob, first.top) == (5, -0.2, ((5, -0.2), (7, -2.0)))
    assert (second.token, second.top) == (9, ((4, -0.5), (3, -1.0)))
    # llama-cpp-python: tokens by text.
    text_choice = {"logprobs": {"tokens": [" a"], "token_logprobs": [-0.1],
                                "top_logprobs": [{" a": -0.1, " b": -2.5}]}}  # fmt: skip
    (entry,) = choice_logprobs(text_choice, 5)
    assert entry.token == " a" and entry.top == ((" a", -0.1), (" b", -2.5))
    # Off, absent or malformed: nothing rather than wrong values.
    assert choice_logprobs(choice, 0) == []
    assert choice_logprobs({"text": "x"}, 3) == []
    assert choice_logprobs({"logprobs": {"tokens": ["a"], "token_logprobs": []}}, 3) == []
    assert choice_logprobs({"logprobs": {"tokens": ["a"], "token_logprobs": ["bad"]}}, 3) == []
