"""The never-failing predict: valid rows before the deadline, whatever engine and sandbox do."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pytest

from aimo_infer.backends.base import (
    Engine,
    EngineInfo,
    EngineUnavailable,
    GenerationRequest,
    StreamDelta,
)
from aimo_infer.config import Config, ConfigError, EngineConfig, TIRConfig
from aimo_infer.kaggle.predict import (
    ANSWER_LIMITS,
    Predictor,
    answer_row,
    first_value,
    submission_answer,
)
from aimo_infer.solve import prompts
from aimo_infer.traces import read_trace
from sandbox.api import ExecResult

_MODE_RE = re.compile(r"chaos:(\w+):(\d+)")


@dataclass
class Chaos:
    """What the fakes share across engine restarts: faults to inject and what happened."""

    fail_loads: int = 0
    template_fails: bool = False  # the next chat-template rendering raises
    sandbox_dead: bool = False
    block_s: float = 0.3
    loads: int = 0
    shutdowns: int = 0
    live_engines: set[int] = field(default_factory=set)


class ChaosEngine(Engine):
    """Behaves as the problem text says: answer, raise, hang, block the loop, spew garbage..."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos
        self._running: set[str] = set()
        chaos.live_engines.add(id(self))

    @property
    def info(self) -> EngineInfo:
        return EngineInfo("chaos", "chaos", 1 << 16, tokenizer_path="chaos-tokenizer")

    def num_running(self) -> int:
        return len(self._running)

    async def cancel(self, request_id: str) -> None:
        pass  # ignores cancellation, as a wedged engine would

    async def shutdown(self) -> None:
        self.chaos.shutdowns += 1
        self.chaos.live_engines.discard(id(self))

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        match = _MODE_RE.search(request.prompt or "")
        mode, value = (match.group(1), int(match.group(2))) if match else ("ok", 0)
        self._running.add(request.request_id)
        try:
            async for delta in self._behave(mode, value, request):
                yield delta
        finally:
            self._running.discard(request.request_id)

    async def _behave(self, mode: str, value: int,
                      request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        if mode == "raise":
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        if mode == "memory":
            raise MemoryError()
        if mode == "hang":
            await asyncio.Event().wait()
        if mode == "wedge":  # swallows cancellation: its requests never end
            self._running.add("wedged")
            while True:
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.Event().wait()
        if mode == "block":
            time.sleep(self.chaos.block_s)  # a synchronous call that freezes the event loop
        if mode == "garbage":
            rng = random.Random(request.seed)
            junk = "".join(chr(rng.choice([rng.randrange(0x20, 0x2FFF), 0xD800, 0]))
                           for _ in range(300))
            yield StreamDelta(junk + "\\boxed{", 300, "stop")
            return
        if mode == "die":
            yield StreamDelta("Let me think. ", 4)
            raise ConnectionResetError("engine process died")
        if mode == "sandbox" and request.request_id.endswith("/0"):  # the first segment
            yield StreamDelta("```python\nprint(6*7)\n```", 8, "stop")
            return
        yield StreamDelta(f"The answer is \\boxed{{{value}}}.", 6, "stop")


class ChaosSession:
    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos

    async def run(self, code: str, timeout: float | None = None) -> ExecResult:
        if self.chaos.sandbox_dead:
            raise BrokenPipeError("sandbox manager is gone")
        return ExecResult("ok", "42\n", "", 0.001)

    async def close(self) -> None:
        pass


class ChaosRunner:
    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos

    async def open_session(self) -> ChaosSession:
        return ChaosSession(self.chaos)

    async def close(self) -> None:
        self.chaos.sandbox_dead = False  # a new runner starts with a live sandbox


def chaos_config(base_s: float = 0.3, profile: str = "aimo3", streams: int = 2) -> Config:
    cfg = Config()
    cfg.solve.num_streams = streams
    cfg.solve.stop_policy = "all"
    cfg.solve.profile = profile
    cfg.budget.base_s = base_s
    cfg.budget.max_extra_s = base_s / 4
    cfg.budget.min_per_problem_s = base_s / 4
    cfg.budget.total_s = 1e6
    cfg.budget.safety_margin_s = 0.0
    cfg.submission.wind_down_s = base_s / 3
    cfg.submission.return_margin_s = base_s / 5
    cfg.submission.restart_timeout_s = 1.0
    cfg.submission.load_timeout_s = 5.0
    return cfg


def make_predictor(chaos: Chaos, cfg: Config, num_problems: int = 1000) -> Predictor:
    def engine_factory(_: EngineConfig) -> ChaosEngine:
        chaos.loads += 1
        if chaos.fail_loads:
            chaos.fail_loads -= 1
            raise EngineUnavailable("out of GPU memory while loading")
        return ChaosEngine(chaos)

    def runner_factory(_: TIRConfig) -> ChaosRunner:
        return ChaosRunner(chaos)

    return Predictor(cfg, engine_factory=engine_factory, runner_factory=runner_factory,
                     num_problems=num_problems, ping_timeout_s=0.05)


class ChaosTokenizer:
    """The chat template, failing once when the chaos says so."""

    def __init__(self, chaos: Chaos) -> None:
        self.chaos = chaos

    def apply_chat_template(self, messages: list[dict[str, str]], **_: object) -> str:
        if self.chaos.template_fails:
            self.chaos.template_fails = False
            raise ValueError("tokenizer: cannot encode the chat template")
        return prompts.plain_template(messages)


def with_chaos_tokenizer(chaos: Chaos, monkeypatch: pytest.MonkeyPatch) -> Chaos:
    monkeypatch.setattr(prompts, "_load_tokenizer", lambda _path: ChaosTokenizer(chaos))
    return chaos


@pytest.fixture
def chaos(monkeypatch: pytest.MonkeyPatch) -> Chaos:
    return with_chaos_tokenizer(Chaos(), monkeypatch)


@pytest.fixture
def predictor(chaos: Chaos) -> Iterator[Predictor]:
    p = make_predictor(chaos, chaos_config())
    p.start()
    yield p
    p.close()


def call(p: Predictor, chaos: Chaos, mode: str, value: int, pid: str = "p") -> pl.DataFrame:
    """One gateway-style call (polars Series in), injecting the fault ``mode``."""
    if mode == "tokenizer":
        chaos.template_fails = True
    elif mode == "sandbox":
        chaos.sandbox_dead = True
    elif mode == "load_fail":
        chaos.fail_loads = 1
        mode = "raise"  # the engine crashes, and its restart fails once
    problem = None if mode == "bad_input" else f"Find x. chaos:{mode}:{value}"
    return p.predict(pl.Series("id", [pid]), pl.Series("problem", [problem]),
                     pl.Series("answer", [str(value)]))


def assert_valid_row(row: pl.DataFrame, pid: str, profile: str = "aimo3") -> int:
    assert isinstance(row, pl.DataFrame)
    assert row.columns == ["id", "answer"] and row.height == 1
    assert row["id"][0] == pid
    assert row["answer"].dtype == pl.Int64
    answer = row["answer"][0]
    assert 0 <= answer < ANSWER_LIMITS[profile]
    return answer


# ----- pure helpers ---------------------------------------------------------------------------

@pytest.mark.parametrize(("answer", "profile", "expected"), [
    (42, "aimo3", 42), (99_999, "aimo3", 99_999), (100_000, "aimo3", 7), (-3, "aimo3", 7),
    (1234, "aimo2", 234), (-1, "aimo2", 999), ("017", "aimo3", 17), (" 5 ", "aimo2", 5),
    ("3/4", "aimo3", 7), (None, "aimo3", 7), (True, "aimo3", 7), (12.0, "aimo3", 12),
    (12.5, "aimo3", 7), ("9" * 100, "aimo3", 7),
])
def test_submission_answer_is_always_in_range(answer: object, profile: str,
                                              expected: int) -> None:
    assert submission_answer(answer, profile, fallback=7) == expected


def test_first_value_reads_series_sequences_and_scalars() -> None:
    assert first_value(pl.Series("id", ["a1"])) == "a1"
    assert first_value(pl.Series("id", [], dtype=pl.String)) is None
    assert first_value(["x", "y"]) == "x"
    assert first_value("plain") == "plain"


def test_answer_row_keeps_the_served_id_and_its_dtype() -> None:
    row = answer_row(pl.Series("id", [17], dtype=pl.Int64), 5)
    assert row["id"].dtype == pl.Int64 and row["id"][0] == 17
    assert answer_row("abc", 5).to_dicts() == [{"id": "abc", "answer": 5}]


@pytest.mark.parametrize(("key", "value"), [
    ("profile", "free"), ("fallback_answer", 1000), ("load", "sometime"),
])
def test_bad_submission_settings_are_rejected(key: str, value: object) -> None:
    cfg = chaos_config(profile="aimo2")
    if key == "profile":
        cfg.solve.profile = value  # type: ignore[assignment]
    else:
        setattr(cfg.submission, key, value)
    with pytest.raises(ConfigError):
        Predictor(cfg)


# ----- behaviour under faults -----------------------------------------------------------------

def test_a_healthy_engine_answers_with_the_served_id(predictor: Predictor, chaos: Chaos) -> None:
    row = call(predictor, chaos, "ok", 123, pid="abc123")
    assert assert_valid_row(row, "abc123") == 123
    assert predictor.calls[-1].outcome == "answered"


def test_plain_values_are_accepted_as_well_as_series(predictor: Predictor) -> None:
    row = predictor.predict("q1", "Find x. chaos:ok:9")
    assert row.to_dicts() == [{"id": "q1", "answer": 9}]


def test_aimo2_answers_are_reduced_mod_1000(chaos: Chaos) -> None:
    with make_predictor(chaos, chaos_config(profile="aimo2")) as p:
        row = call(p, chaos, "ok", 2024)
    assert assert_valid_row(row, "p", "aimo2") == 24


@pytest.mark.parametrize("mode", ["raise", "memory", "die", "tokenizer", "sandbox", "load_fail"])
def test_a_failure_gives_the_fallback_and_the_next_problem_works(
    predictor: Predictor, chaos: Chaos, mode: str
) -> None:
    row = call(predictor, chaos, mode, 55)
    assert assert_valid_row(row, "p") == predictor.fallback
    assert predictor.restarts == 1
    assert predictor.calls[-1].outcome in {"error", "engine_error"}
    after = call(predictor, chaos, "ok", 77, pid="next")
    assert assert_valid_row(after, "next") == 77
    assert chaos.shutdowns >= 1  # the broken engine was closed, not leaked


def test_garbage_text_gives_the_fallback_without_a_restart(predictor: Predictor,
                                                           chaos: Chaos) -> None:
    row = call(predictor, chaos, "garbage", 1)
    assert assert_valid_row(row, "p") == predictor.fallback
    assert predictor.calls[-1].outcome == "no_answer"
    assert predictor.restarts == 0


def test_a_hung_request_is_cut_by_the_watchdog_and_the_drained_engine_kept(
    predictor: Predictor, chaos: Chaos
) -> None:
    row = call(predictor, chaos, "hang", 3)
    assert assert_valid_row(row, "p") == predictor.fallback
    # The solve loop cuts the hung request within its grace (no_answer) unless the watchdog,
    # 40 ms after the solve deadline in this config, fires first (timeout).
    assert predictor.calls[-1].outcome in {"no_answer", "timeout"}
    assert not predictor.calls[-1].overrun
    assert call(predictor, chaos, "ok", 4).item(0, "answer") == 4
    assert (predictor.restarts, chaos.loads) == (0, 1)  # its requests drained: no reload


def test_a_wedged_engine_is_replaced_after_the_watchdog(chaos: Chaos) -> None:
    cfg = chaos_config()
    cfg.submission.restart_timeout_s = 0.1  # how long a drain may take before a reload
    with make_predictor(chaos, cfg) as p:
        row = call(p, chaos, "wedge", 3)
        assert assert_valid_row(row, "p") == p.fallback
        assert p.calls[-1].outcome == "timeout"
        for i in range(10):  # the reload runs in the background; a call may come first
            if call(p, chaos, "ok", 4 + i).item(0, "answer") == 4 + i:
                break
        assert p.calls[-1].outcome == "answered"
        assert p.restarts == 1 and chaos.loads == 2


def test_a_wedged_engine_cut_by_the_solve_loop_is_replaced(chaos: Chaos) -> None:
    """The solve loop abandons streams that will not end and returns before the watchdog;
    the predictor still drains the engine, and reloads it when it will not drain."""
    cfg = chaos_config(base_s=1.0)
    cfg.submission.return_margin_s = 0.01  # the watchdog comes well after the solve's grace
    cfg.submission.restart_timeout_s = 0.1
    with make_predictor(chaos, cfg) as p:
        row = call(p, chaos, "wedge", 3)
        assert assert_valid_row(row, "p") == p.fallback
        assert p.calls[-1].outcome == "no_answer"
        for i in range(10):  # the reload runs in the background; a call may come first
            if call(p, chaos, "ok", 4 + i).item(0, "answer") == 4 + i:
                break
        assert p.calls[-1].outcome == "answered"
        assert p.restarts == 1 and chaos.loads == 2


def test_a_blocked_event_loop_is_abandoned_for_a_fresh_one(predictor: Predictor,
                                                           chaos: Chaos) -> None:
    chaos.block_s = 1.0
    first_loop = predictor._worker
    assert assert_valid_row(call(predictor, chaos, "block", 3), "p") == predictor.fallback
    outcomes = []
    for i in range(5):  # the loop check may need a call of its own before answers return
        row = call(predictor, chaos, "ok", 10 + i)
        outcomes.append(predictor.calls[-1].outcome)
        if outcomes[-1] == "answered":
            assert row.item(0, "answer") == 10 + i
            break
    assert outcomes[-1] == "answered"
    assert predictor._worker is not first_loop


def test_a_missing_problem_text_gets_the_fallback(predictor: Predictor, chaos: Chaos) -> None:
    row = call(predictor, chaos, "bad_input", 0)
    assert assert_valid_row(row, "p") == predictor.fallback
    assert predictor.calls[-1].outcome == "bad_input"


def test_first_call_load_waits_for_the_engine(chaos: Chaos) -> None:
    cfg = chaos_config()
    cfg.submission.load = "first_call"
    p = make_predictor(chaos, cfg)
    p.start()
    assert chaos.loads == 0  # nothing loaded before the first call
    try:
        assert call(p, chaos, "ok", 8).item(0, "answer") == 8
        assert chaos.loads == 1
    finally:
        p.close()
    assert not chaos.live_engines


def test_eager_load_builds_before_serving_and_fails_loudly(chaos: Chaos) -> None:
    cfg = chaos_config()
    cfg.submission.load = "eager"
    with make_predictor(chaos, cfg) as p:
        assert chaos.loads == 1
        assert call(p, chaos, "ok", 2).item(0, "answer") == 2
    chaos.fail_loads = 1
    with pytest.raises(EngineUnavailable):
        make_predictor(chaos, cfg).start()


def test_the_run_ends_before_its_limit_and_late_calls_answer_at_once(chaos: Chaos) -> None:
    cfg = chaos_config()
    cfg.budget.total_s = 0.6
    with make_predictor(chaos, cfg, num_problems=3) as p:
        end = p.budget.end
        for i in range(12):
            call(p, chaos, "hang", i, pid=f"h{i}")
            if p.calls[-1].outcome == "no_time":
                break
        assert p.calls[-1].outcome == "no_time"
        assert all(c.returned_at <= end for c in p.calls if c.outcome != "no_time")
        assert all(c.deadline is None or c.deadline <= end for c in p.calls)


def test_calls_are_traced(tmp_path: Path, chaos: Chaos) -> None:
    cfg = chaos_config()
    cfg.submission.trace = str(tmp_path / "trace.jsonl")
    with make_predictor(chaos, cfg) as p:
        call(p, chaos, "ok", 5, pid="a")
        call(p, chaos, "raise", 5, pid="b")
    events = list(read_trace(tmp_path / "trace.jsonl"))
    predicts = [e for e in events if e["event"] == "predict"]
    assert [(e["problem_id"], e["outcome"]) for e in predicts] == [("a", "answered"),
                                                                   ("b", "engine_error")]
    assert any(e["event"] == "restart" for e in events)
    assert any(e["event"] == "problem_end" for e in events)


# ----- the soak: many faults in a row ---------------------------------------------------------

def soak(num_calls: int, seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Random faults; every call must return a valid row for its id, before its deadline."""
    rng = random.Random(seed)
    chaos = with_chaos_tokenizer(Chaos(block_s=0.2), monkeypatch)
    # 150 ms between the watchdog and the deadline: room for a busy 2-core machine's scheduling
    # (75 ms once let one call in 1,000 return late while the rest of the suite ran beside it).
    cfg = chaos_config(base_s=0.3)
    cfg.submission.return_margin_s = 0.15
    cfg.submission.restart_timeout_s = 0.2
    p = make_predictor(chaos, cfg, num_problems=num_calls)
    p.start()
    weights = {"ok": 40, "raise": 8, "memory": 4, "hang": 4, "garbage": 8, "die": 8,
               "tokenizer": 6, "sandbox": 8, "load_fail": 4, "block": 1, "bad_input": 2, "wedge": 1}
    modes = rng.choices(list(weights), weights=list(weights.values()), k=num_calls)
    errors: list[BaseException] = []
    overruns = 0
    try:
        for i, mode in enumerate(modes):
            pid = f"id{i}"
            try:
                row = call(p, chaos, mode, rng.randrange(100_000), pid=pid)
            except BaseException as exc:  # counted, not raised: the test reports them all
                errors.append(exc)
                continue
            returned = time.monotonic()
            assert_valid_row(row, pid)
            deadline = p.calls[-1].deadline
            overruns += deadline is not None and returned > deadline
    finally:
        p.close()
    assert errors == []
    assert overruns == 0
    assert len(p.calls) == num_calls
    answered = sum(c.outcome == "answered" for c in p.calls)
    assert answered > 0  # recovery works: healthy problems still get answered
    assert threading.active_count() < 50  # restarts do not pile up threads


def test_soak_120_faulty_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    soak(120, seed=1, monkeypatch=monkeypatch)


@pytest.mark.slow
def test_soak_1000_faulty_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    soak(1000, seed=2, monkeypatch=monkeypatch)
