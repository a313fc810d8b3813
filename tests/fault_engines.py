"""Misbehaving engines for the solve loop's fault tests (and benchmarks/solve_overrun.py).

Each breaks one promise of the engine protocol (aimo_infer/backends/base.py: ``cancel`` ends a
request at once and its stream then yields a final ``"cancelled"`` delta; nothing comes after a
finish delta) the way a real adapter can: an HTTP cancel that fails or hangs (backends/openai.py
posts to a server), a C++ loop that keeps decoding after cancel (backends/llamacpp_loop.py), a
wrapper that turns a cancel into ``CancelledError`` or exits the interpreter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    GenerationRequest,
    StreamDelta,
)

PARTIAL = "First guess \\boxed{12}. Let me double check "
FILLER = "carefully "


class FaultEngine(Engine):
    """Streams ``PARTIAL`` then ``FILLER`` at ``tokens_per_s`` until ``limit`` tokens, honouring
    cancel unless a subclass says otherwise; ``shutdown`` releases every stream for good."""

    def __init__(self, tokens_per_s: float = 400.0, limit: int = 100_000,
                 head: str = PARTIAL) -> None:
        self.tokens_per_s = tokens_per_s
        self.limit = limit
        self.head = head
        self.cancel_calls: list[str] = []
        self.cancelled: set[str] = set()
        self.running: set[str] = set()
        self.yields_after_finish = 0
        self.stopped = asyncio.Event()

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("fault", "fault", 1 << 20)

    def num_running(self) -> int:
        return len(self.running)

    async def cancel(self, request_id: str) -> None:
        self.cancel_calls.append(request_id)
        self.cancelled.add(request_id)

    async def shutdown(self) -> None:
        self.stopped.set()

    async def tick(self) -> None:
        await asyncio.sleep(1.0 / self.tokens_per_s)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        rid = request.request_id
        self.running.add(rid)
        try:
            yield StreamDelta(self.head, 8)
            for _ in range(self.limit):
                if rid in self.cancelled or self.stopped.is_set():
                    yield StreamDelta("", 0, "cancelled")
                    return
                await self.tick()
                yield StreamDelta(FILLER, 1)
            yield StreamDelta("", 0, "length")
        finally:
            self.running.discard(rid)


class CancelRaises(FaultEngine):
    """``cancel`` raises (an HTTP cancel to a server that is gone) and does nothing."""

    async def cancel(self, request_id: str) -> None:
        self.cancel_calls.append(request_id)
        raise EngineError("cancel failed: connection refused")


class CancelHangs(FaultEngine):
    """``cancel`` never returns (a cancel posted to a server that stopped answering)."""

    async def cancel(self, request_id: str) -> None:
        self.cancel_calls.append(request_id)
        await self.stopped.wait()


class IgnoresCancel(FaultEngine):
    """``cancel`` is accepted and ignored: the request streams on until its tokens run out."""

    async def cancel(self, request_id: str) -> None:
        self.cancel_calls.append(request_id)


class SwallowsCancellation(IgnoresCancel):
    """Ignores cancel and swallows the ``CancelledError`` thrown into its stream, streaming on
    until ``shutdown``: the stream's task cannot be ended from outside."""

    async def tick(self) -> None:
        while True:
            try:
                await asyncio.sleep(1.0 / self.tokens_per_s)
                return
            except asyncio.CancelledError:
                if self.stopped.is_set():
                    raise
                continue


class RaisesAfterText(FaultEngine):
    """Streams ``head`` then raises ``exc`` (an adapter bug, a wrapper converting a disconnect
    into ``CancelledError``, or a library calling ``sys.exit``)."""

    def __init__(self, exc: BaseException, head: str = "So \\boxed{7}. Checking ") -> None:
        super().__init__(head=head)
        self.exc = exc

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        yield StreamDelta(self.head, 5)
        await asyncio.sleep(0)
        raise self.exc


class TalksAfterFinish(FaultEngine):
    """Yields a ``stop`` finish delta, then more text (a protocol violation)."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        yield StreamDelta("The answer is \\boxed{5}.", 6)
        yield StreamDelta("", 0, "stop")
        for _ in range(3):
            self.yields_after_finish += 1
            yield StreamDelta(" Actually \\boxed{9}.", 5)
