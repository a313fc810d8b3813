"""A bug in the harness is reported, not taken for a dead engine (no reload); an engine that
fails is still reloaded."""

from __future__ import annotations

from collections.abc import AsyncIterator

import polars as pl
import pytest

import aimo_infer.solve.controller as controller_module
from aimo_infer.backends.base import GenerationRequest, StreamDelta
from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.config import Config, EngineConfig
from aimo_infer.kaggle.predict import Predictor
from aimo_infer.solve.faults import raised_by_harness
from aimo_infer.solve.policies import parse_policy
from aimo_infer.solve.vote import majority_vote


def caught(fn: object, *args: object) -> BaseException:
    try:
        fn(*args)  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("no exception")


def test_whose_fault_an_exception_is() -> None:
    assert raised_by_harness(caught(majority_vote, None))  # a TypeError inside solve/vote.py
    assert not raised_by_harness(caught(parse_policy, "agree=0"))  # bad input, not a bug
    assert not raised_by_harness(caught(GenerationRequest, "r"))  # raised in backends/
    assert not raised_by_harness(RuntimeError("never raised"))  # no traceback: not ours

    def engine_library() -> None:
        raise RuntimeError("CUDA error: an illegal memory access")

    assert not raised_by_harness(caught(engine_library))  # outside the package


class CountingEngine(ReplayEngine):
    """The replay engine, counting its shutdowns."""

    shutdowns = 0

    async def shutdown(self) -> None:
        self.shutdowns += 1
        await super().shutdown()


class FailingEngine(CountingEngine):
    """Raises from its own code on every request, as a crashed engine does."""

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        raise RuntimeError("engine died")
        yield StreamDelta("", 0)  # pragma: no cover - makes this an async generator


def predictor(kinds: list[type[CountingEngine]], loads: list[CountingEngine]) -> Predictor:
    """A predictor whose n-th engine load builds ``kinds[n]`` (the last one thereafter)."""
    cfg = Config()
    cfg.solve.prompt, cfg.solve.profile, cfg.solve.num_streams = "cot", "aimo3", 2
    cfg.submission.load = "eager"

    def factory(_: EngineConfig) -> CountingEngine:
        kind = kinds[min(len(loads), len(kinds) - 1)]
        loads.append(kind({}, default=lambda r: ["\\boxed{7}"]))
        return loads[-1]

    return Predictor(cfg, engine_factory=factory, num_problems=3)


def serve(p: Predictor, pid: str) -> int:
    row = p.predict(pl.Series("id", [pid]), pl.Series("problem", ["What is 3 + 4?"]))
    return int(row["answer"][0])


def test_a_harness_bug_in_every_stream_keeps_the_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    loads: list[CountingEngine] = []
    with predictor([CountingEngine], loads) as p:
        assert serve(p, "a") == 7
        # A bug in the solve loop's own code: every stream fails inside controller.py.
        monkeypatch.setattr(controller_module, "GenerationRequest", None)
        assert serve(p, "b") == p.fallback
        assert p.calls[-1].outcome == "error"
        assert p.restarts == 0 and len(loads) == 1
        monkeypatch.undo()
        assert serve(p, "c") == 7


def test_a_failing_engine_is_still_reloaded_and_each_engine_closed_once() -> None:
    loads: list[CountingEngine] = []
    with predictor([FailingEngine, CountingEngine], loads) as p:
        assert serve(p, "a") == p.fallback
        assert p.calls[-1].outcome == "engine_error"
        assert p.restarts == 1
        assert serve(p, "b") == 7  # on the reloaded engine
    # closed controllers are tracked by object: each engine was shut down exactly once
    assert [type(e) for e in loads] == [FailingEngine, CountingEngine]
    assert [e.shutdowns for e in loads] == [1, 1]
