"""What every adapter over an async, in-flight-batching engine (vLLM, TensorRT-LLM) does the same way.

Pure rules (stop text matched across delta boundaries, ``max_tokens`` clamped to the context
window, engine finish reasons mapped to ours, the identical-seeds check) and ``StreamingEngine``,
which turns an engine's raw async stream into ``StreamDelta``s with cancel and abort handled once.
"""

from __future__ import annotations

import abc
import asyncio
import importlib
import logging
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    TokenLogprob,
    find_stop,
)
from aimo_infer.manifest import EngineManifest

log = logging.getLogger(__name__)

# Engine finish reasons in their own words -> ours. vLLM: stop/length/abort/error/repetition;
# TensorRT-LLM: stop/length/timeout/cancelled.
_FINISH_REASONS: dict[str, FinishReason] = {
    "stop": "stop",
    "length": "length",
    "abort": "cancelled",
    "cancelled": "cancelled",
    "error": "error",
    "timeout": "error",
    "repetition": "length",  # the engine cut a looping stream short: no natural end
}


def map_finish_reason(engine_reason: str) -> FinishReason:
    """Our finish reason for an engine's; an unknown word is an error, never a silent success."""
    return _FINISH_REASONS.get(str(engine_reason).lower(), "error")


def clamp_max_tokens(requested: int, prompt_len: int, context_length: int | None) -> int:
    """Tokens a request may generate: what it asked for, within the engine's context window.

    Zero means the prompt leaves no room (the request finishes with ``"length"`` at once).
    """
    if context_length is None:
        return requested
    return max(0, min(requested, context_length - prompt_len))


def identical_seeds_reason(manifest: EngineManifest | None) -> str | None:
    """Why every seed gives the same stream on this engine (a greedy ReDrafter build), or None."""
    if manifest is None or not manifest.greedy_drafter:
        return None
    return (
        "this ReDrafter engine was built with greedy drafting: it ignores temperature, so all "
        "seeds give the same stream (rebuild with --redrafter_no_greedy_search for diverse streams)"
    )


class StopMatcher:
    """Finds the first stop string in streamed text, also when it spans delta boundaries."""

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = tuple(s for s in stops if s)
        self._keep = max((len(s) for s in self.stops), default=1) - 1
        self._tail = ""  # the end of the text seen so far: enough to complete any stop string

    def feed(self, delta: str) -> tuple[str, str | None]:
        """The part of ``delta`` to emit and the stop string it ends with (None: no stop yet)."""
        if not self.stops:
            return delta, None
        # The tail is shorter than any stop string, so a match here always ends in the new delta.
        window = self._tail + delta
        end = find_stop(window, self.stops)
        if end < 0:
            self._tail = window[-self._keep :] if self._keep else ""
            return delta, None
        matched = next(s for s in self.stops if window.endswith(s, 0, end))
        return delta[: end - len(self._tail)], matched


def import_engine_package(module: str, engine: str, where: str) -> ModuleType:
    """Import an engine's package, or fail with one line naming the extra that installs it."""
    from aimo_infer.backends import missing_extra_message

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailable(
            f"{missing_extra_message(engine, module)} {where} ({type(exc).__name__}: {exc})"
        ) from exc
    except Exception as exc:  # e.g. a missing CUDA driver raises at import time
        raise EngineUnavailable(
            f"engine {engine!r}: importing {module} failed ({type(exc).__name__}: {exc}); "
            f"it needs {where.removeprefix('on ')}"
        ) from exc


@dataclass(frozen=True)
class RawDelta:
    """One chunk of an engine's stream, in the engine's own words."""

    text: str
    num_tokens: int
    finish_reason: str | None = None  # set on the engine's last chunk
    stop_reason: str | int | None = None  # the stop string or token id the engine stopped on
    token_ids: tuple[int, ...] = ()  # the chunk's generated ids (engines with token_io)
    logprobs: tuple[TokenLogprob, ...] = ()  # one per token of this chunk, when asked for


_CANCELLED = object()
_ENDED = object()


@dataclass
class _Running:
    """A request the adapter holds: its queue of raw chunks and the task that fills it."""

    queue: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    pump: asyncio.Task[None] | None = None
    cancelled: bool = False
    engine_active: bool = True  # the engine may still hold it (needs an abort to free it)


class StreamingEngine(Engine):
    """Shared streaming logic over an engine that yields raw chunks per request.

    A pump task per request reads the engine's stream into a queue, so ``cancel`` ends the
    request's stream at once whatever the engine does after its abort. Subclasses supply
    tokenisation, the raw stream, the engine abort and the engine shutdown.
    """

    # True for engine clients that live in the event loop they first ran in (vLLM's AsyncLLM).
    single_event_loop = False

    def __init__(self, info: EngineInfo) -> None:
        self._info = info
        self._running: dict[str, _Running] = {}
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def info(self) -> EngineInfo:
        return self._info

    def num_running(self) -> int:
        return len(self._running)

    @abc.abstractmethod
    async def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        """The request's prompt as token ids (the adapter clamps ``max_tokens`` with its length)."""

    @abc.abstractmethod
    def _stream(
        self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int
    ) -> AsyncIterator[RawDelta]:
        """Submit the request and yield its raw chunks until the engine finishes it."""

    @abc.abstractmethod
    async def _abort(self, request_id: str) -> None:
        """Tell the engine to drop a request (it may already be gone)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Shut the engine down and free its processes and memory."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        if self._closed:
            raise EngineError(f"engine {self._info.name!r} is shut down")
        if self.single_event_loop:
            self._check_event_loop()
        rid = request.request_id
        if rid in self._running:
            raise ValueError(f"request id {rid!r} is already running")
        state = _Running()
        self._running[rid] = state
        try:
            try:
                prompt_ids = await self._prompt_token_ids(request)
            except Exception as exc:
                state.engine_active = False
                yield StreamDelta("", 0, "error", f"tokenising the prompt failed: {exc}")
                return
            max_tokens = clamp_max_tokens(
                request.max_tokens, len(prompt_ids), self._info.context_length
            )
            if max_tokens == 0:
                state.engine_active = False
                yield StreamDelta("", 0, "length")
                return
            state.pump = asyncio.create_task(self._pump(request, prompt_ids, max_tokens, state))
            async for delta in self._deltas(request, state):
                yield delta
        finally:
            self._running.pop(rid, None)
            if state.pump is not None and not state.pump.done():
                state.pump.cancel()
            if state.engine_active:
                state.engine_active = False
                await self._abort_quietly(rid)

    def _check_event_loop(self) -> None:
        """Fail clearly, instead of hanging, when a loop-bound engine is used from another loop."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise EngineError(
                f"engine {self._info.name!r} is bound to the event loop it first ran in; "
                "run all its requests (and its shutdown) in one event loop"
            )

    async def _deltas(
        self, request: GenerationRequest, state: _Running
    ) -> AsyncIterator[StreamDelta]:
        """Turn queued raw chunks into deltas: stop text, finish reasons, cancel and errors."""
        matcher = StopMatcher(request.stop)
        while True:
            item = await state.queue.get()
            if state.cancelled or item is _CANCELLED:
                yield StreamDelta("", 0, "cancelled")
                return
            if isinstance(item, BaseException):
                state.engine_active = False
                yield StreamDelta("", 0, "error", f"{type(item).__name__}: {item}")
                return
            if item is _ENDED:
                state.engine_active = False
                yield StreamDelta("", 0, "error", "the engine ended the stream without a reason")
                return
            assert isinstance(item, RawDelta)
            text, matched = matcher.feed(item.text)
            if matched is not None:
                # Engine-side stop strings can be missed; ours ends the request here, and the
                # generator's cleanup aborts the engine request if it is still running.
                state.engine_active = item.finish_reason is None
                yield StreamDelta(text, item.num_tokens, "stop", token_ids=item.token_ids,
                                  logprobs=item.logprobs)
                return
            if item.finish_reason is None:
                yield StreamDelta(text, item.num_tokens, token_ids=item.token_ids,
                                  logprobs=item.logprobs)
                continue
            state.engine_active = False
            finish = map_finish_reason(item.finish_reason)
            if finish == "stop" and isinstance(item.stop_reason, str) and item.stop_reason:
                text += item.stop_reason  # the engine stripped its stop string: put it back
            error = f"engine finish reason {item.finish_reason!r}" if finish == "error" else None
            yield StreamDelta(text, item.num_tokens, finish, error, token_ids=item.token_ids,
                              logprobs=item.logprobs)
            return

    async def _pump(
        self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int, state: _Running
    ) -> None:
        """Read the engine's stream into the request's queue; errors travel as items."""
        try:
            finished = False
            async for raw in self._stream(request, prompt_ids, max_tokens):
                state.queue.put_nowait(raw)
                finished = raw.finish_reason is not None
            if not finished:
                state.queue.put_nowait(_ENDED)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            state.queue.put_nowait(exc)

    async def cancel(self, request_id: str) -> None:
        state = self._running.get(request_id)
        if state is None or state.cancelled:
            return
        state.cancelled = True
        state.queue.put_nowait(_CANCELLED)
        if state.pump is not None and not state.pump.done():
            state.pump.cancel()
        if state.engine_active:
            state.engine_active = False
            await self._abort_quietly(request_id)

    async def _abort_quietly(self, request_id: str) -> None:
        try:
            await self._abort(request_id)
        except Exception as exc:  # an abort of a finished request must not break the caller
            log.debug("abort of %s failed: %s", request_id, exc)

    async def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        for rid in list(self._running):
            await self.cancel(rid)
        await self._close()


def ranked_logprobs(token_ids: Sequence[int], entries: Any, k: int) -> tuple[TokenLogprob, ...]:
    """Per-token logprobs from the ``{token_id: Logprob}`` dicts vLLM and TensorRT-LLM's PyTorch
    backend return (each holds the top k and the sampled token, which may rank past k; a
    ``Logprob`` has ``.logprob``), alternatives sorted and cut to ``k``. A plain float per token
    (TensorRT-LLM's engine path) gives the sampled token's logprob without alternatives."""
    if k <= 0 or not entries:
        return ()
    out = []
    for token, entry in zip(token_ids, entries, strict=False):
        if isinstance(entry, (int, float)):
            out.append(TokenLogprob(int(token), min(float(entry), 0.0)))
            continue
        values = {int(t): min(float(getattr(v, "logprob", v)), 0.0) for t, v in entry.items()}
        top = tuple(sorted(values.items(), key=lambda tv: (-tv[1], tv[0]))[:k])
        chosen = values.get(int(token))
        if chosen is None:  # not reported: no more probable than the last alternative
            chosen = top[-1][1] if top else 0.0
        out.append(TokenLogprob(int(token), chosen, top))
    return tuple(out)
