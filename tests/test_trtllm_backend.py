"""The TensorRT-LLM adapter, run against a STAND-IN ``tensorrt_llm`` package, NOT TensorRT-LLM.

TensorRT-LLM cannot be installed here (it needs NVIDIA's wheel index and a driver), so the
stand-in (tests/standins/tensorrt_llm) keeps the names, keyword arguments and traps read in the
1.x sources: ``_tensorrt_engine.LLM`` for engine directories and ``LLM`` for the PyTorch backend
reject unknown arguments; ``generate_async(..., streaming=True)`` needs a running event loop;
results async-iterate with ``outputs[0].text_diff``, ``abort()`` ends them "cancelled";
``SamplingParams.max_tokens`` defaults to 32; unset top-p/top-k decode greedily; stop strings
are tokenised alone, so the engine misses those that tokenise differently in context; the
engine path rejects prompt + max_tokens > max_seq_len; a greedy ReDrafter engine gives every
seed the same stream. A fake model answers with the text between « and » in the prompt, then
seeded words. The real engine is checked by ``benchmarks/gpu_smoke.py`` on a GPU machine.
"""

from __future__ import annotations

import asyncio
import json
import logging
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
from aimo_infer.backends.trtllm import TRTLLMEngine, trtllm_sampling_kwargs
from aimo_infer.config import EngineConfig
from aimo_infer.manifest import EngineManifest, write_manifest
from tests.fakes import collect, request, text_of

LONG = "«" + " step" * 60 + "»"


@pytest.fixture(autouse=True)
def _standins() -> Iterator[None]:
    with standin_packages():
        yield


@pytest.fixture
def hf_dir(tmp_path: Path) -> Path:
    path = tmp_path / "hf"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    return path


def engine_dir(tmp_path: Path, max_seq_len: int = 256, greedy_redrafter: bool = False) -> Path:
    path = tmp_path / "engine"
    path.mkdir()
    pretrained = {"architecture": "ReDrafterForLLaMALM",
                  "redrafter_greedy_search": greedy_redrafter}
    config = {"build_config": {"max_seq_len": max_seq_len}, "pretrained_config": pretrained}
    (path / "config.json").write_text(json.dumps(config))
    return path


def make_engine(model: Path, **options: Any) -> TRTLLMEngine:
    engine = create_engine(EngineConfig("trtllm", str(model), options))
    assert isinstance(engine, TRTLLMEngine)
    return engine


async def settle(engine: TRTLLMEngine) -> int:
    """Let the stand-in executor process pending aborts; the requests it still holds."""
    for _ in range(100):
        if engine._llm.standin_active() == 0:
            break
        await asyncio.sleep(0)
    return engine._llm.standin_active()


def test_engine_directory_loads_through_the_tensorrt_engine_llm(tmp_path: Path, hf_dir: Path) -> None:
    from tensorrt_llm._tensorrt_engine import LLM

    engine = make_engine(engine_dir(tmp_path, max_seq_len=300), tokenizer=str(hf_dir))
    assert type(engine._llm) is LLM
    assert engine.info.context_length == 300
    assert engine.info.tokenizer_path == str(hf_dir)
    assert engine.info.extra["backend"] == "trt"


def test_engine_directory_without_tokenizer_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EngineUnavailable, match="needs its Hugging Face tokenizer"):
        make_engine(engine_dir(tmp_path))


def test_engine_manifest_supplies_tokenizer_and_max_seq_len(tmp_path: Path, hf_dir: Path) -> None:
    path = engine_dir(tmp_path, max_seq_len=256)
    write_manifest(path, EngineManifest(model="m", backend="trt-engine", max_seq_len=200,
                                        tokenizer_path=str(hf_dir)))
    engine = make_engine(path)
    assert engine.info.context_length == 200
    assert engine.info.tokenizer_path == str(hf_dir)


def test_checkpoint_loads_on_the_pytorch_backend_with_speculative_options(hf_dir: Path) -> None:
    from tensorrt_llm.llmapi import EagleDecodingConfig

    spec = {"decoding_type": "Eagle", "max_draft_len": 3, "speculative_model_dir": "/d",
            "eagle3_one_model": True}
    engine = make_engine(hf_dir, speculative_config=spec, disable_overlap_scheduler=True)
    config = engine._llm.args.speculative_config
    assert isinstance(config, EagleDecodingConfig)
    assert (config.max_draft_len, config.speculative_model_dir) == (3, "/d")
    assert engine.info.extra["backend"] == "pytorch"
    assert engine.info.context_length == 512  # from the checkpoint's config.json
    assert spec["decoding_type"] == "Eagle"  # the caller's table is left as it was


@pytest.mark.parametrize(
    ("spec", "message"),
    [({"max_draft_len": 3}, "needs decoding_type"),
     ({"decoding_type": "Medusa2"}, r"unknown decoding_type 'Medusa2'; this TensorRT-LLM has \['DraftTarget', 'Eagle', 'MTP', 'NGram'\]"),
     ({"decoding_type": "NGram", "bogus": 1}, "not permitted")],
)
def test_bad_speculative_config_is_a_clear_error(hf_dir: Path, spec: dict, message: str) -> None:
    with pytest.raises(EngineError, match=message):
        make_engine(hf_dir, speculative_config=spec)


def test_backend_option_forces_the_path_and_rejects_unknown_values(hf_dir: Path) -> None:
    with pytest.raises(EngineError, match="not an engine directory"):
        make_engine(hf_dir, backend="trt", tokenizer=str(hf_dir))
    with pytest.raises(EngineError, match="backend must be 'trt' or 'pytorch'"):
        make_engine(hf_dir, backend="tensorrt")


def test_option_the_backend_does_not_know_is_a_clear_error(hf_dir: Path) -> None:
    with pytest.raises(EngineError, match="invalid argument: build_config"):
        make_engine(hf_dir, build_config={})


def test_seeds_pass_through_and_give_different_streams(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))

    async def main() -> list[str]:
        reqs = [request(f"r{i}", seed=s, max_tokens=100) for i, s in enumerate([3, 4, 5, 4])]
        results = await asyncio.gather(*(collect(engine, r) for r in reqs))
        await engine.shutdown()
        return [text_of(r) for r in results]

    texts = asyncio.run(main())
    assert len({texts[0], texts[1], texts[2]}) == 3  # top-p/top-k set, so the engine samples
    assert texts[1] == texts[3]


def test_sampling_params_set_every_trap_explicitly() -> None:
    req = GenerationRequest("k", prompt="p", seed=11, temperature=0.7, top_p=0.9, top_k=0,
                            min_p=0.02, stop=("</s>",), max_tokens=1000)
    assert trtllm_sampling_kwargs(req, 900) == {
        "max_tokens": 900, "seed": 11, "temperature": 0.7, "top_p": 0.9, "top_k": 0,
        "stop": ["</s>"], "include_stop_str_in_output": True, "min_p": 0.02,
    }
    greedy = trtllm_sampling_kwargs(GenerationRequest("g", prompt="p", temperature=0.0), 5)
    assert (greedy["top_k"], greedy["temperature"]) == (1, 1.0)


def test_max_tokens_is_set_beyond_the_default_of_32(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))
    deltas = asyncio.run(collect(engine, request("d", LONG, max_tokens=50)))
    assert sum(d.num_tokens for d in deltas) == 50
    assert deltas[-1].finish_reason == "length"
    assert len(deltas) > 1  # streamed, not one final chunk


def test_max_tokens_is_clamped_to_max_seq_len(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path, max_seq_len=48), tokenizer=str(hf_dir))
    prompt = "Say «" + " word" * 30 + "»"
    prompt_len = len(engine._llm.tokenizer.encode(prompt, add_special_tokens=False))
    deltas = asyncio.run(collect(engine, request("c", prompt, max_tokens=4096)))
    assert deltas[-1].finish_reason == "length"
    assert sum(d.num_tokens for d in deltas) == 48 - prompt_len


def test_stop_string_the_engine_misses_is_matched_in_text_and_aborted(
    tmp_path: Path, hf_dir: Path
) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))
    prompt = "Run «x = 2\nprint(x)\n```output\n2\n```" + " more" * 40 + "»"

    async def main() -> tuple[list[StreamDelta], int]:
        deltas = await collect(engine, request("s", prompt, stop=("```output",), max_tokens=200))
        return deltas, await settle(engine)

    deltas, held = asyncio.run(main())
    assert text_of(deltas) == "x = 2\nprint(x)\n```output"
    assert deltas[-1].finish_reason == "stop"
    assert held == 0  # the engine did not stop by itself: the adapter aborted it


def test_stop_string_the_engine_catches_ends_the_text(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))
    deltas = asyncio.run(collect(engine, request("e", "Go «a b STOP c d»", stop=(" STOP",))))
    assert text_of(deltas) == "a b STOP"
    assert deltas[-1].finish_reason == "stop"


def test_cancel_ends_one_request_and_frees_it_while_others_continue(
    tmp_path: Path, hf_dir: Path
) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))

    async def main() -> tuple[list[StreamDelta], list[list[StreamDelta]], int]:
        started = asyncio.Event()
        victim: list[StreamDelta] = []

        async def watch() -> None:
            async for d in engine.generate(request("victim", LONG, seed=9, max_tokens=200)):
                victim.append(d)
                started.set()

        task = asyncio.create_task(watch())
        others = [asyncio.create_task(collect(engine, request(f"o{i}", LONG, seed=i,
                                                              max_tokens=200)))
                  for i in range(2)]
        await started.wait()
        await engine.cancel("victim")
        await task
        finished = list(await asyncio.gather(*others))
        return victim, finished, await settle(engine)

    victim, others, held = asyncio.run(main())
    assert victim[-1].finish_reason == "cancelled"
    for deltas in others:
        assert deltas[-1].finish_reason == "stop"
        assert text_of(deltas).startswith(" step" * 60)
    assert engine.num_running() == 0 and held == 0


def test_greedy_redrafter_manifest_warns_and_marks_identical_seeds(
    tmp_path: Path, hf_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = engine_dir(tmp_path, greedy_redrafter=True)
    write_manifest(path, EngineManifest(model="m", backend="trt-engine",
                                        drafter={"kind": "redrafter", "greedy": True},
                                        tokenizer_path=str(hf_dir)))
    with caplog.at_level(logging.WARNING):
        engine = make_engine(path)
    assert any("same stream" in r.getMessage() for r in caplog.records)
    assert engine.info.deterministic is True
    assert engine.info.extra["identical_seeds"] is True

    async def main() -> set[str]:
        results = await asyncio.gather(*(collect(engine, request(f"g{s}", seed=s)) for s in range(3)))
        return {text_of(r) for r in results}

    assert len(asyncio.run(main())) == 1  # what the warning is about


def test_sampling_redrafter_manifest_does_not_warn(
    tmp_path: Path, hf_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = engine_dir(tmp_path)
    write_manifest(path, EngineManifest(model="m", backend="trt-engine",
                                        drafter={"kind": "redrafter", "greedy": False},
                                        tokenizer_path=str(hf_dir)))
    with caplog.at_level(logging.WARNING):
        engine = make_engine(path)
    assert not caplog.records
    assert engine.info.extra["identical_seeds"] is False and engine.info.deterministic is False


def test_end_id_option_reaches_sampling_params(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir), end_id=0, pad_id=0)
    assert engine._token_ids == {"end_id": 0, "pad_id": 0}
    deltas = asyncio.run(collect(engine, request("x", max_tokens=100)))
    assert deltas[-1].finish_reason == "stop"


def test_missing_package_names_the_extra(hf_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # None makes the import fail
    with pytest.raises(EngineUnavailable) as err:
        TRTLLMEngine.from_config(EngineConfig("trtllm", str(hf_dir)))
    assert str(err.value).startswith(
        "engine 'trtllm' needs tensorrt_llm: pip install 'aimo-infer[trtllm]' on a GPU machine"
    )
    with pytest.raises(EngineUnavailable, match=r"^engine 'trtllm' needs tensorrt_llm: pip install"):
        make_engine(hf_dir)  # the registry checks before the adapter loads


def test_shutdown_cancels_running_streams_and_shuts_the_llm(tmp_path: Path, hf_dir: Path) -> None:
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))

    async def main() -> StreamDelta:
        stream = engine.generate(request("long", LONG, max_tokens=200))
        await anext(stream)
        await engine.shutdown()
        return [d async for d in stream][-1]

    assert asyncio.run(main()).finish_reason == "cancelled"
    assert engine._llm.shutdown_calls == 1
    assert engine.num_running() == 0


@pytest.mark.slow
def test_gpu_smoke_script_passes_against_the_standin(tmp_path: Path, hf_dir: Path) -> None:
    """The benchmark's own logic, end to end on the stand-in (the real run needs a GPU)."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN_DIR), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, str(script), str(engine_dir(tmp_path, max_seq_len=16384)),
         "--tokenizer", str(hf_dir), "--no-gpu-check", "--max-tokens", "64", "--chatml",
         "--option", "end_id=0"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[FAIL]" not in done.stdout
    for check in ("template", "seeds", "identical-seeds warning", "same seed", "greedy",
                  "stop strings with end_id", "long prompt"):
        assert f"[PASS] trtllm 1.2.0+standin {check}:" in done.stdout, check
    assert done.stdout.splitlines()[-1].startswith("gpu_smoke ok=1 engine=trtllm tok_s_1=")


@pytest.mark.slow
def test_gpu_smoke_script_fails_where_the_template_or_end_id_is_missing(
    tmp_path: Path, hf_dir: Path
) -> None:
    """No silent ChatML: a tokenizer directory without a chat template is a FAIL."""
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(STANDIN_DIR), os.getcwd()])}
    done = subprocess.run(
        [sys.executable, str(script), str(engine_dir(tmp_path, max_seq_len=2048)),
         "--tokenizer", str(hf_dir), "--no-gpu-check", "--max-tokens", "32", "--streams", "3"],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    for check in ("template", "stop strings with end_id", "long prompt"):
        assert f"[FAIL] trtllm 1.2.0+standin {check}:" in done.stdout, check


def test_gpu_smoke_script_refuses_to_run_without_a_gpu(tmp_path: Path) -> None:
    script = Path(__file__).parents[1] / "benchmarks" / "gpu_smoke.py"
    env = {**os.environ, "PATH": str(tmp_path)}  # no nvidia-smi on this PATH
    done = subprocess.run([sys.executable, str(script), str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "no NVIDIA GPU found" in done.stderr and "Traceback" not in done.stderr


# --- Behaviours read in the 1.2-era sources (each modelled in the stand-in, source cited there) ---


def distinct_texts(engine: TRTLLMEngine, seeds: list[int], **kw: Any) -> set[str]:
    """The texts that requests with these seeds give (one element: the seeds changed nothing)."""

    async def main() -> set[str]:
        reqs = [request(f"s{i}", LONG, seed=s, max_tokens=80, **kw) for i, s in enumerate(seeds)]
        results = await asyncio.gather(*(collect(engine, r) for r in reqs))
        assert all(r[-1].finish_reason in ("stop", "length") for r in results), results
        return {text_of(r) for r in results}

    return asyncio.run(main())


def test_stop_strings_still_work_when_end_id_is_set(tmp_path: Path, hf_dir: Path) -> None:
    """llm.py tokenises stop strings (``_setup``) only when end_id is None; with end_id set a
    request with stop strings used to fail with "... is not processed by tokenizer"."""
    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir), end_id=0)
    deltas = asyncio.run(collect(engine, request("e", "Go «a b STOP c d»", stop=(" STOP",))))
    assert deltas[-1].error is None
    assert (text_of(deltas), deltas[-1].finish_reason) == ("a b STOP", "stop")
    params = engine._llm._executor.submitted[-1][1]
    assert 0 in (params.stop_token_ids or []) or params.end_id == 0  # the end token still ends it


def test_greedy_request_on_a_sampling_redrafter_engine_decodes_greedily(
    tmp_path: Path, hf_dir: Path
) -> None:
    """The explicit-draft-tokens layer reads only temperature and seed: top_k=1 is no greedy."""
    engine = make_engine(engine_dir(tmp_path, greedy_redrafter=False), tokenizer=str(hf_dir))
    assert len(distinct_texts(engine, [1, 2, 3], temperature=0.0)) == 1
    assert len(distinct_texts(engine, [1, 2, 3], temperature=0.7)) == 3
    sampling = engine.stats()["sampling"]
    assert sampling["honours"] == ["temperature", "seed"]
    assert sampling["greedy_as_low_temperature"] == 3


def test_filters_a_redrafter_engine_ignores_are_warned_and_counted(
    tmp_path: Path, hf_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    engine = make_engine(engine_dir(tmp_path, greedy_redrafter=False), tokenizer=str(hf_dir))
    with caplog.at_level(logging.WARNING):
        distinct_texts(engine, [1, 2], temperature=0.7, top_p=0.9, top_k=20, min_p=0.05)
    warned = [r.getMessage() for r in caplog.records if "ignores" in r.getMessage()]
    assert len(warned) == 1 and all(f in warned[0] for f in ("top_p", "top_k", "min_p"))
    assert engine.stats()["sampling"]["ignored"] == {"top_p": 2, "top_k": 2, "min_p": 2}


@pytest.mark.parametrize("flag", [True, None])  # None: the key is absent (greedy is the default)
def test_hand_built_greedy_redrafter_engine_is_detected_from_its_config_json(
    tmp_path: Path, hf_dir: Path, caplog: pytest.LogCaptureFixture, flag: bool | None
) -> None:
    path = engine_dir(tmp_path, greedy_redrafter=bool(flag))
    if flag is None:
        config = json.loads((path / "config.json").read_text())
        del config["pretrained_config"]["redrafter_greedy_search"]
        (path / "config.json").write_text(json.dumps(config))
    with caplog.at_level(logging.WARNING):
        engine = make_engine(path, tokenizer=str(hf_dir))  # no engine.json
    assert engine.info.extra["identical_seeds"] is True
    assert engine.info.extra["seeds_reproducible"] is True  # trivially: every seed, one stream
    assert engine.stats()["sampling"]["honours"] == []
    assert any("same stream" in r.getMessage() for r in caplog.records)
    assert len(distinct_texts(engine, [1, 2, 3])) == 1


def test_pytorch_backend_accepts_a_resumed_prompt_past_8192_tokens(tmp_path: Path) -> None:
    """TorchLlmArgs: max_num_tokens 8192 and chunked prefill off reject longer prompts."""
    model = tmp_path / "hf-long"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 32768}))
    engine = make_engine(model)
    prompt = engine._llm.tokenizer.encode(LONG + " word" * 9000, add_special_tokens=False)
    assert len(prompt) > 8192
    req = GenerationRequest("long", prompt_token_ids=tuple(prompt), max_tokens=20)
    deltas = asyncio.run(collect(engine, req))
    assert deltas[-1].error is None and deltas[-1].finish_reason == "length"
    assert engine._llm.args.enable_chunked_prefill is True


def test_pytorch_backend_keeps_a_chunked_prefill_choice_made_in_the_options(hf_dir: Path) -> None:
    engine = make_engine(hf_dir, enable_chunked_prefill=False, max_num_tokens=16384)
    assert (engine._llm.args.enable_chunked_prefill, engine._llm.args.max_num_tokens) == (False, 16384)


def test_pytorch_backend_1_2_reports_seeds_as_not_reproducible_and_warns_on_min_p(
    hf_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = make_engine(hf_dir)
    assert engine.info.extra["seeds_reproducible"] is False
    with caplog.at_level(logging.WARNING):
        texts = distinct_texts(engine, [5, 5], min_p=0.05)
    assert len(texts) == 2  # what the report is about: one seed, two streams
    assert any("min_p" in r.getMessage() for r in caplog.records)

    import tensorrt_llm

    monkeypatch.setattr(tensorrt_llm, "__version__", "1.3.0")
    later = make_engine(hf_dir)
    assert later.info.extra["seeds_reproducible"] is True
    assert len(distinct_texts(later, [5, 5])) == 1


EAGLE3 = {"decoding_type": "Eagle", "max_draft_len": 3, "speculative_model_dir": "/d",
          "eagle3_one_model": True}


def test_eagle3_one_model_samples_because_advanced_sampling_is_allowed(hf_dir: Path) -> None:
    engine = make_engine(hf_dir, speculative_config=dict(EAGLE3))
    assert engine._llm.args.speculative_config.allow_advanced_sampling is True
    assert engine.info.extra["identical_seeds"] is False
    opted_out = make_engine(hf_dir, speculative_config={**EAGLE3,
                                                               "allow_advanced_sampling": False})
    assert opted_out.info.extra["identical_seeds"] is True  # the caller's choice, reported


def test_eagle3_without_advanced_sampling_reports_identical_seeds(
    hf_dir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tensorrt_llm.llmapi.llm_args import DecodingBaseConfig

    fields = {k: v for k, v in DecodingBaseConfig._fields.items() if k != "allow_advanced_sampling"}
    monkeypatch.setattr(DecodingBaseConfig, "_fields", fields)  # a version without the field
    with caplog.at_level(logging.WARNING):
        engine = make_engine(hf_dir, speculative_config=dict(EAGLE3))
    assert engine.info.extra["identical_seeds"] is True
    assert any("greedy" in r.getMessage() for r in caplog.records)


def test_rendered_prompt_is_encoded_without_a_second_bos(tmp_path: Path, hf_dir: Path) -> None:
    """A chat template that writes <s> itself must not get another from the tokenizer."""
    from standin_core import BOS_ID

    engine = make_engine(engine_dir(tmp_path), tokenizer=str(hf_dir))
    asyncio.run(collect(engine, request("b", "<s>[INST] Go «a b» [/INST]", max_tokens=5)))
    prompt_ids = engine._llm._executor.submitted[-1][0]
    assert prompt_ids.count(BOS_ID) == 1 and prompt_ids[0] == BOS_ID


def test_pytorch_backend_reads_its_load_options_from_engine_json(hf_dir: Path) -> None:
    from tensorrt_llm.llmapi import NGramDecodingConfig

    write_manifest(hf_dir, EngineManifest(
        model=str(hf_dir), backend="trtllm-pytorch", max_seq_len=400, max_batch_size=8,
        build_flags={"max_batch_size": 8, "max_seq_len": 400, "tensor_parallel_size": 1,
                     "speculative_config": {"decoding_type": "NGram", "max_draft_len": 4,
                                            "max_matching_ngram_size": 3}}))
    engine = make_engine(hf_dir, max_batch_size=4)  # an explicit option wins over engine.json
    args = engine._llm.args
    assert (args.max_batch_size, args.max_seq_len) == (4, 400)
    assert isinstance(args.speculative_config, NGramDecodingConfig)
    assert (args.speculative_config.max_draft_len,
            args.speculative_config.max_matching_ngram_size) == (4, 3)
    assert engine.info.context_length == 400


def test_logprobs_map_from_pytorch_dicts_and_engine_floats() -> None:
    from types import SimpleNamespace

    from tensorrt_llm.executor.result import Logprob

    from aimo_infer.backends.trtllm import trtllm_logprobs

    assert trtllm_sampling_kwargs(request("r", logprobs=4), 8)["logprobs"] == 4
    assert "logprobs" not in trtllm_sampling_kwargs(request("r"), 8)
    # PyTorch backend: a {token_id: Logprob} per new token, top k, unsorted; the sampled token
    # (9) of the second step is not among them.
    out = SimpleNamespace(
        token_ids_diff=[5, 9],
        logprobs_diff=[{7: Logprob(-2.0, 2), 5: Logprob(-0.2, 1)},
                       {3: Logprob(-1.0, 2), 4: Logprob(-0.5, 1)}],
    )  # fmt: skip
    first, second = trtllm_logprobs(out, 2)
    assert first.token == 5 and first.logprob == -0.2 and first.top == ((5, -0.2), (7, -2.0))
    assert second.top == ((4, -0.5), (3, -1.0))
    assert second.logprob == -1.0  # not reported: bounded by the last alternative
    # Engine path: one float per token, no alternatives.
    engine_out = SimpleNamespace(token_ids_diff=[5, 6], logprobs_diff=[-0.1, -3.0])
    assert [(e.token, e.logprob, e.top) for e in trtllm_logprobs(engine_out, 3)] == [
        (5, -0.1, ()), (6, -3.0, ())]
    assert trtllm_logprobs(out, 0) == ()
    assert trtllm_logprobs(SimpleNamespace(token_ids_diff=[1]), 2) == ()  # none returned
