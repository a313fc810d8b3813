"""Wiring: build the engine, the sandbox and the controller from one config, and tear them down.

``build_controller`` is the one set-up, used by the CLI's ``harness`` and by the submission's
``Predictor`` (and so by dry runs).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, TIRConfig
from aimo_infer.loop_thread import run_in_daemon_thread
from aimo_infer.solve.controller import Controller
from aimo_infer.solve.prompts import load_profile, prepare_template
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner

log = logging.getLogger(__name__)

T = TypeVar("T")
# How long tear-down steps may take before they are left behind (an engine whose shutdown hangs,
# a stream task that swallows cancellation): a command must not outlive its deadline for them.
TEARDOWN_GRACE_S = 5.0
LEFTOVER_GRACE_S = 0.5


async def bounded(step: Awaitable[object], seconds: float, what: str) -> None:
    """Await ``step`` for at most ``seconds``; a failure or a hang is logged, not raised."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        log.warning("%s did not finish in %.1f s; leaving it behind", what, seconds)
    elif not task.cancelled() and task.exception() is not None:
        log.warning("%s failed: %s", what, task.exception())


def run_bounded(main: Coroutine[Any, Any, T], leftover_s: float = LEFTOVER_GRACE_S) -> T:
    """``asyncio.run(main)``, except that tasks still running when ``main`` returns (a stream
    that swallows cancellation) get ``leftover_s`` to end and are then dropped, not awaited
    forever: the command returns when its work is done."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main)
    finally:
        try:
            leftover = asyncio.all_tasks(loop)
            for task in leftover:
                task.cancel()
            if leftover:
                loop.run_until_complete(asyncio.wait(leftover, timeout=leftover_s))
            dropped = asyncio.all_tasks(loop)
            if dropped:
                log.warning("dropping %d task(s) that would not end", len(dropped))
                # their destruction and their generators' failed closes are that, not errors
                loop.set_exception_handler(lambda _, context: log.debug("%s", context))
            else:
                loop.run_until_complete(bounded(loop.shutdown_asyncgens(), leftover_s,
                                                "closing async generators"))
        finally:
            loop.close()


def make_runner(tir: TIRConfig) -> CodeRunner:
    """The hardened sandbox with the TIR limits (CPU time, wall clock, memory), started.

    Started here, so that its manager imports the warm modules (about 0.7 s of CPU) before the
    engine decodes rather than while the first code cell waits. A sandbox that cannot start is
    reported, and each code cell then fails on its own: streams without code still answer.
    """
    from sandbox import SandboxConfig, SandboxError, SandboxPool

    pool = SandboxPool(SandboxConfig(cpu_time_s=tir.code_timeout_s,
                                     wall_time_s=tir.code_wall_timeout_s,
                                     memory_mb=tir.code_memory_mb))
    try:
        pool.start_sync()
    except (SandboxError, OSError) as exc:
        log.warning("the sandbox did not start (%s); code cells will fail", exc)
    return pool


def needs_sandbox(config: Config) -> bool:
    """Whether the configured prompt runs code (then the controller needs a sandbox)."""
    return load_profile(config.solve.prompt).runs_code


async def build_controller(
    config: Config,
    engine: Engine,
    tracer: TraceWriter | None = None,
    runner_factory: Callable[[TIRConfig], CodeRunner] = make_runner,
    clock: Callable[[], float] = time.monotonic,
) -> Controller:
    """The sandbox (when the prompt runs code), the chat template and the controller around
    ``engine``; the blocking steps run off the event loop. A failure closes the sandbox it
    started and raises (the engine stays the caller's to close)."""
    runner: CodeRunner | None = None
    try:
        if needs_sandbox(config):
            runner = await run_in_daemon_thread(runner_factory, config.solve.tir)
        await run_in_daemon_thread(prepare_template, engine.info.tokenizer_path)
        return Controller(engine, runner, config, tracer, clock)
    except BaseException:
        if runner is not None:
            await runner.close()
        raise


@asynccontextmanager
async def harness(
    config: Config, tracer: TraceWriter | None = None, engine: Engine | None = None
) -> AsyncIterator[Controller]:
    """A ready controller; the engine (unless given) and the sandbox are closed on exit."""
    own_engine = engine is None
    runner: CodeRunner | None = None
    try:
        if engine is None:
            engine = create_engine(config.engine)
        controller = await build_controller(config, engine, tracer)
        runner = controller.runner
        yield controller
    finally:
        if runner is not None:
            await bounded(runner.close(), TEARDOWN_GRACE_S, "sandbox close")
        if own_engine and engine is not None:
            await bounded(engine.shutdown(), TEARDOWN_GRACE_S, "engine shutdown")
