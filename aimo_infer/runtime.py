"""Wiring: build the engine, the sandbox and the controller from one config, and tear them down.

``build_controller`` is the one set-up, used by the CLI's ``harness`` and by the submission's
``Predictor`` (and so by dry runs).
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, TIRConfig
from aimo_infer.loop_thread import run_in_daemon_thread
from aimo_infer.solve.controller import Controller
from aimo_infer.solve.prompts import load_profile, prepare_template
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner

log = logging.getLogger(__name__)


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
            await runner.close()
        if own_engine and engine is not None:
            await engine.shutdown()
