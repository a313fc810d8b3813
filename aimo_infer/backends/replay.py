"""Replay engine: streams scripted or recorded completions, token by token, optionally timed.

A product feature (policy simulation from recorded traces) and the deterministic engine of the
unit tests. Scripts are keyed by seed; the n-th request of a stream (same seed, a prompt that
extends the stream's first prompt) gets the n-th segment.
"""

from __future__ import annotations

import asyncio
import math
import re
import zlib
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from aimo_infer.backends.base import (
    Engine,
    EngineInfo,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    TokenLogprob,
    logprobs_from_json,
)
from aimo_infer.backends.streaming import StopMatcher
from aimo_infer.config import EngineConfig

_TOKEN = re.compile(r"\s*[A-Za-z]+|\s*\d|\s*[^\sA-Za-z\d]|\s+")


@dataclass(frozen=True)
class ReplaySegment:
    """One engine request's output: its text, token count (None: split by a simple rule) and,
    optionally, the logprobs recorded for its tokens (one per token)."""

    text: str
    tokens: int | None = None
    finish_reason: FinishReason = "stop"
    token_ids: tuple[int, ...] | None = None  # token-out: stream these ids (``text`` unused)
    logprobs: tuple[TokenLogprob, ...] | None = None


def scripted_logprob(seed: int, index: int, piece: str, k: int) -> TokenLogprob:
    """A deterministic stand-in logprob for a token without a recorded one: the piece's hash is
    its id, it is the most probable token, and the seed and position set how sure it is."""
    token = zlib.crc32(piece.encode()) % 50_000
    spread = 0.5 + ((seed * 31 + index * 17) % 97) / 24.0  # 0.5..4.5: how peaked
    logits = [-spread * j for j in range(max(k, 1))]
    norm = math.log(sum(math.exp(x) for x in logits) + math.exp(-spread * max(k, 1)))
    top = tuple(((token + j) % 50_000, logits[j] - norm) for j in range(k))
    return TokenLogprob(token, logits[0] - norm, top)


def split_tokens(text: str, count: int | None = None) -> list[str]:
    """Split text into pseudo-tokens: ``count`` near-equal pieces, or word/digit/symbol pieces."""
    if count is None:
        return _TOKEN.findall(text) or ([text] if text else [])
    if count <= 0:
        return []
    size, extra = divmod(len(text), count)
    pieces, at = [], 0
    for i in range(count):
        step = size + (1 if i < extra else 0)
        pieces.append(text[at : at + step])
        at += step
    return pieces


Script = Mapping[int, Sequence[ReplaySegment | str]]


class ReplayEngine(Engine):
    """Deterministic engine over scripts keyed by seed.

    ``tokens_per_s`` paces each stream (None: as fast as possible, yielding to the event loop
    every ``yield_every`` tokens). ``honour_stop=False`` makes the engine "miss" stop strings,
    as tokenising engines sometimes do. ``default`` answers seeds without a script.
    """

    def __init__(
        self,
        scripts: Script,
        *,
        tokens_per_s: float | None = None,
        honour_stop: bool = True,
        yield_every: int = 8,
        default: Callable[[GenerationRequest], Sequence[ReplaySegment | str]] | None = None,
        model: str = "replay",
        context_length: int = 1 << 20,
    ) -> None:
        self._scripts = scripts
        self._tokens_per_s = tokens_per_s
        self._honour_stop = honour_stop
        self._yield_every = max(1, yield_every)
        self._default = default
        self._info = EngineInfo("replay", model, context_length, None, True, token_io=True)
        self._running: dict[str, bool] = {}  # request id -> cancel requested
        self._first_prompt: dict[int, str | tuple[int, ...]] = {}
        self._cursor: dict[int, int] = {}
        self.requests: list[GenerationRequest] = []  # every request seen, for tests and reports
        self.cancelled: list[str] = []  # request ids cancelled while running

    @classmethod
    def from_config(cls, config: EngineConfig) -> ReplayEngine:
        """``model`` is a trace file; ``options.problem_id`` picks the problem to replay."""
        from aimo_infer.traces import latest_attempts, read_trace

        if not config.model:
            raise EngineUnavailable("engine 'replay' needs model = a trace file to replay")
        path = Path(config.model)
        if not path.is_file():
            raise EngineUnavailable(f"replay trace not found: {path}")
        events = latest_attempts(read_trace(path))  # a resumed run: what ran last
        problem_id = config.options.get("problem_id")
        scripts: dict[int, list[ReplaySegment]] = {}
        for ev in events:
            if ev.get("event") == "segment" and (problem_id in (None, ev.get("problem_id"))):
                ids = ev.get("token_ids")  # harmony segments record their token ids
                recorded = ev.get("logprobs")
                seg = ReplaySegment(
                    ev["text"], ev.get("tokens"), ev.get("finish_reason", "stop"),
                    token_ids=tuple(ids) if isinstance(ids, list) else None,
                    logprobs=None if recorded is None else logprobs_from_json(recorded))
                scripts.setdefault(int(ev["seed"]), []).append(seg)
        return cls(scripts, tokens_per_s=config.options.get("tokens_per_s"))

    @property
    def info(self) -> EngineInfo:
        return self._info

    def num_running(self) -> int:
        return len(self._running)

    async def cancel(self, request_id: str) -> None:
        if request_id in self._running:
            self._running[request_id] = True
            self.cancelled.append(request_id)

    async def shutdown(self) -> None:
        for rid in self._running:
            self._running[rid] = True

    def _segment_for(self, request: GenerationRequest) -> ReplaySegment | None:
        prompt = request.prompt if request.prompt is not None else request.prompt_token_ids or ()
        seed = request.seed
        first = self._first_prompt.get(seed)
        if first is not None and len(prompt) > len(first) and prompt[: len(first)] == first:
            index = self._cursor[seed] + 1  # a resumed stream: the next segment
        else:
            self._first_prompt[seed] = prompt
            index = 0
        self._cursor[seed] = index
        segments = self._scripts.get(seed)
        if segments is None and self._default is not None:
            segments = self._default(request)
        if segments is None or index >= len(segments):
            return None
        seg = segments[index]
        return ReplaySegment(seg) if isinstance(seg, str) else seg

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        self.requests.append(request)
        rid = request.request_id
        if rid in self._running:
            raise ValueError(f"request id {rid!r} is already running")
        self._running[rid] = False
        try:
            segment = self._segment_for(request)
            if segment is None:
                yield StreamDelta("", 0, "error", f"no replay script for seed {request.seed}")
                return
            async for delta in self._emit(rid, request, segment):
                yield delta
        finally:
            self._running.pop(rid, None)

    async def _emit(
        self, rid: str, request: GenerationRequest, segment: ReplaySegment
    ) -> AsyncIterator[StreamDelta]:
        if segment.token_ids is not None:
            async for delta in self._emit_ids(rid, request, segment.token_ids, segment):
                yield delta
            return
        pieces = split_tokens(segment.text, segment.tokens)
        delay = None if self._tokens_per_s is None else 1.0 / self._tokens_per_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        stops = StopMatcher(request.stop if self._honour_stop else ())
        k = request.logprobs
        recorded = segment.logprobs if segment.logprobs is not None else ()
        if len(recorded) != len(pieces):
            recorded = ()  # a recording that does not match its text: stand-ins instead

        def logprobs(i: int, piece: str) -> tuple[TokenLogprob, ...]:
            if k <= 0:
                return ()
            if recorded:
                entry = recorded[i]
                return (TokenLogprob(entry.token, entry.logprob, entry.top[:k]),)
            return (scripted_logprob(request.seed, i, piece, k),)

        for i, piece in enumerate(pieces):
            if self._running[rid]:
                yield StreamDelta("", 0, "cancelled")
                return
            if delay is not None:
                wait = start + (i + 1) * delay - loop.time()
                await asyncio.sleep(max(0.0, wait))
            elif i % self._yield_every == self._yield_every - 1:
                await asyncio.sleep(0)
            kept, matched = stops.feed(piece)
            if matched is not None:
                yield StreamDelta(kept, 1, "stop", logprobs=logprobs(i, piece))
                return
            if i + 1 >= request.max_tokens and i + 1 < len(pieces):
                yield StreamDelta(piece, 1, "length", logprobs=logprobs(i, piece))
                return
            yield StreamDelta(piece, 1, logprobs=logprobs(i, piece))
        if self._running[rid]:
            yield StreamDelta("", 0, "cancelled")
            return
        yield StreamDelta("", 0, segment.finish_reason)

    async def _emit_ids(
        self, rid: str, request: GenerationRequest, ids: tuple[int, ...], segment: ReplaySegment
    ) -> AsyncIterator[StreamDelta]:
        """Token-out: one id per delta; a stop token id ends the request and is streamed last."""
        stops = set(request.stop_token_ids) if self._honour_stop else set()
        delay = None if self._tokens_per_s is None else 1.0 / self._tokens_per_s
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i, token in enumerate(ids):
            if self._running[rid]:
                yield StreamDelta("", 0, "cancelled")
                return
            if delay is not None:
                await asyncio.sleep(max(0.0, start + (i + 1) * delay - loop.time()))
            elif i % self._yield_every == self._yield_every - 1:
                await asyncio.sleep(0)
            lp = (scripted_logprob(request.seed, i, str(token), request.logprobs),) \
                if request.logprobs > 0 else ()
            if token in stops:
                yield StreamDelta("", 1, "stop", token_ids=(token,), logprobs=lp)
                return
            if i + 1 >= request.max_tokens and i + 1 < len(ids):
                yield StreamDelta("", 1, "length", token_ids=(token,), logprobs=lp)
                return
            yield StreamDelta("", 1, token_ids=(token,), logprobs=lp)
        yield StreamDelta("", 0, "cancelled" if self._running[rid] else segment.finish_reason)

