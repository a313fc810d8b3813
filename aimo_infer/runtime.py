"""Wiring: build the engine, the sandbox and the controller from one config, and tear them down."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, TIRConfig
from aimo_infer.controller import Controller
from aimo_infer.prompts import load_profile, prepare_template
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner


def make_runner(tir: TIRConfig) -> CodeRunner:
    """The hardened sandbox with the TIR limits (CPU time, wall clock, memory)."""
    from sandbox import SandboxConfig, SandboxPool

    return SandboxPool(SandboxConfig(cpu_time_s=tir.code_timeout_s,
                                     wall_time_s=tir.code_wall_timeout_s,
                                     memory_mb=tir.code_memory_mb))


@asynccontextmanager
async def harness(
    config: Config, tracer: TraceWriter | None = None, engine: Engine | None = None
) -> AsyncIterator[Controller]:
    """A ready controller; the engine (unless given) and the sandbox are closed on exit."""
    own_engine = engine is None
    uses_code = bool(load_profile(config.solve.prompt).tool_format.open)
    runner: CodeRunner | None = None
    try:
        if engine is None:
            engine = create_engine(config.engine)
        runner = make_runner(config.solve.tir) if uses_code else None
        prepare_template(engine.info.tokenizer_path)
        yield Controller(engine, runner, config, tracer)
    finally:
        if runner is not None:
            await runner.close()
        if own_engine and engine is not None:
            await engine.shutdown()
