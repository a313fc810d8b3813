"""The TIR loop with the real sandbox (the default runner), driven by the replay engine."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os

import pytest

from aimo_infer.backends.base import EngineInfo
from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.config import Config
from aimo_infer.runtime import harness, make_runner
from aimo_infer.solve import prompts
from aimo_infer.solve.controller import ProblemResult, stream_seed
from sandbox import SandboxError, SandboxPool


def test_code_runs_in_the_real_sandbox_with_state_and_limits() -> None:
    seeds = [stream_seed(0, "p", i) for i in range(2)]
    scripts = {
        seeds[0]: [
            "Set up.\n```python\nimport sympy as sp\nx = sp.Symbol('x')\nr = sp.solve(x**2 - 49, x)\n```",
            " Roots found.\n```python\nprint(max(r))\n```",
            " So \\boxed{7}.",
        ],
        seeds[1]: [
            "```python\nwhile True:\n    pass\n```",
            " That hung.\n```python\nprint(undefined_name)\n```",
            " \\boxed{7}",
        ],
    }
    cfg = Config()
    cfg.solve.num_streams = 2
    cfg.solve.stop_policy = "all"
    cfg.solve.tir.code_timeout_s = 1.0

    async def go() -> ProblemResult:
        async with harness(cfg, engine=ReplayEngine(scripts)) as controller:
            return await controller.solve("p", "Find the positive root of x^2 = 49.")

    result = asyncio.run(go())
    first, second = result.streams
    assert [c.status for c in first.code_calls] == ["ok", "ok"]
    assert first.code_calls[1].feedback == "7"  # state kept between cells
    assert "```output\n7\n```" in first.text
    assert [c.status for c in second.code_calls] == ["timeout", "error"]
    assert second.code_calls[0].feedback.endswith("Timed out")
    assert "NameError" in second.code_calls[1].feedback
    assert "Traceback" not in second.text
    assert result.answer == 7


def test_the_chat_template_loads_before_the_first_problem_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """transformers' import and the tokenizer take seconds: the harness pays them up front, not
    the first problem's clock."""
    loaded: list[str] = []

    class Tokenizer:
        def apply_chat_template(self, messages: list[dict[str, str]], **_: object) -> str:
            return prompts.plain_template(messages)

    def load(path: str) -> Tokenizer:
        loaded.append(path)
        return Tokenizer()

    class TemplatedReplay(ReplayEngine):
        @property
        def info(self) -> EngineInfo:
            return dataclasses.replace(super().info, tokenizer_path="model-dir")

    monkeypatch.setattr(prompts, "_load_tokenizer", load)
    cfg = Config()
    cfg.solve.num_streams = 1
    cfg.solve.prompt = "cot"

    async def go() -> ProblemResult:
        engine = TemplatedReplay({}, default=lambda _request: [" \\boxed{3}"])
        async with harness(cfg, engine=engine) as controller:
            assert loaded == ["model-dir"]  # before any problem
            return await controller.solve("p", "What is 1+2?")

    assert asyncio.run(go()).answer == 3


def test_the_sandbox_starts_before_the_first_code_cell() -> None:
    """Its manager imports the warm modules (about 0.7 s of CPU) at set-up, not while the first
    cell waits and the engine decodes."""
    pool = make_runner(Config().solve.tir)
    try:
        assert isinstance(pool, SandboxPool) and pool.manager_pid is not None
        os.kill(pool.manager_pid, 0)  # alive
    finally:
        pool.close_sync()


def test_a_sandbox_that_cannot_start_is_reported_and_cells_fail_alone(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(self: SandboxPool) -> None:
        raise SandboxError("the sandbox manager failed to start")

    monkeypatch.setattr(SandboxPool, "start_sync", broken)
    with caplog.at_level(logging.WARNING):
        pool = make_runner(Config().solve.tir)
    assert "sandbox did not start" in caplog.text

    async def open_one() -> None:
        await pool.open_session()

    with pytest.raises(SandboxError):
        asyncio.run(open_one())
