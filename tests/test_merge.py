"""Linear merge: exact values, a loadable result, the promised errors, and bounded memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from aimo_infer.manifest import load_manifest  # noqa: E402
from engines.checkpoint import INDEX_FILE, read_checkpoint  # noqa: E402
from engines.merge import MergeError, main, merge_checkpoints  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def tiny_llama(path: Path, seed: int, dtype: torch.dtype = torch.bfloat16, **overrides: int) -> Path:
    """A randomly initialised 2-layer Llama saved in several safetensors shards."""
    torch.manual_seed(seed)
    dims = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4,
            "num_key_value_heads": 2, "num_hidden_layers": 2, "vocab_size": 96}
    dims.update(overrides)
    config = transformers.LlamaConfig(max_position_embeddings=64, tie_word_embeddings=False, **dims)
    model = transformers.LlamaForCausalLM(config).to(dtype)
    model.save_pretrained(path, max_shard_size="20KB")
    (path / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64, "marker": seed}))
    return path


def load_all(path: Path) -> dict[str, torch.Tensor]:
    ckpt = read_checkpoint(path)
    out = {}
    for file in ckpt.files:
        with safe_open(str(path / file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                out[name] = f.get_tensor(name)
    return out


def expected_merge(tensors: list[torch.Tensor], weights: list[float]) -> torch.Tensor:
    """The documented rounding: float32 products, summed in model order, cast back once."""
    acc = tensors[0].float() * torch.tensor(weights[0], dtype=torch.float32)
    for t, w in zip(tensors[1:], weights[1:], strict=True):
        acc = acc + t.float() * torch.tensor(w, dtype=torch.float32)
    return acc.to(tensors[0].dtype)


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("models")
    return tiny_llama(root / "cot", seed=1), tiny_llama(root / "tir", seed=2)


def test_tiny_models_are_really_sharded(two_models: tuple[Path, Path]) -> None:
    ckpt = read_checkpoint(two_models[0])
    assert ckpt.sharded and len(ckpt.files) >= 3


def test_every_tensor_is_the_weighted_sum(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_models
    report = merge_checkpoints([a, b], [0.3, 0.7], tmp_path / "out", chunk_bytes=1024)
    merged, ta, tb = load_all(tmp_path / "out"), load_all(a), load_all(b)
    assert set(merged) == set(ta) and report.num_tensors == len(ta)
    for name, value in merged.items():
        assert value.dtype == ta[name].dtype
        assert torch.equal(value, expected_merge([ta[name], tb[name]], [0.3, 0.7])), name
        # and within half a bf16 ulp of the exact merge, plus the float32 accumulation error
        # (which only shows where the two terms cancel)
        terms = 0.3 * ta[name].double().abs() + 0.7 * tb[name].double().abs()
        exact = 0.3 * ta[name].double() + 0.7 * tb[name].double()
        tol = torch.finfo(torch.bfloat16).eps / 2 * exact.abs() + 2 * torch.finfo(torch.float32).eps * terms
        assert bool(((value.double() - exact).abs() <= tol).all()), name
    # not trivially equal to an input
    assert not torch.equal(merged["model.norm.weight"], ta["model.norm.weight"]) or not torch.equal(
        merged["lm_head.weight"], ta["lm_head.weight"]
    )


def test_chunked_and_whole_tensor_merges_agree(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    a, b = two_models
    merge_checkpoints([a, b], [0.5, 0.5], tmp_path / "small", chunk_bytes=64)
    merge_checkpoints([a, b], [0.5, 0.5], tmp_path / "big", chunk_bytes=2**30)
    small, big = load_all(tmp_path / "small"), load_all(tmp_path / "big")
    assert all(torch.equal(small[n], big[n]) for n in small)


def test_three_models_float32(tmp_path: Path) -> None:
    paths = [tiny_llama(tmp_path / f"m{i}", seed=10 + i, dtype=torch.float32) for i in range(3)]
    weights = [0.2, 0.5, 0.3]
    merge_checkpoints(paths, weights, tmp_path / "out")
    merged = load_all(tmp_path / "out")
    inputs = [load_all(p) for p in paths]
    for name, value in merged.items():
        assert torch.equal(value, expected_merge([t[name] for t in inputs], weights)), name


def test_merged_model_loads_generates_and_keeps_layout(
    two_models: tuple[Path, Path], tmp_path: Path
) -> None:
    a, b = two_models
    out = tmp_path / "out"
    assert main([str(a), str(b), "--weights", "0.3", "0.7", "--out", str(out)]) == 0
    index = json.loads((out / INDEX_FILE).read_text())
    assert index["weight_map"] == json.loads((a / INDEX_FILE).read_text())["weight_map"]
    assert json.loads((out / "tokenizer_config.json").read_text())["marker"] == 1  # from the first
    assert (out / "generation_config.json").is_file()
    assert json.loads((out / "config.json").read_text()) == json.loads((a / "config.json").read_text())
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    ids = model.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False)
    assert ids.shape == (1, 7)
    manifest = load_manifest(out)
    assert manifest is not None and manifest.backend == "hf"
    assert manifest.merge == {str(a.resolve()): 0.3, str(b.resolve()): 0.7}
    assert manifest.tokenizer_path == str(out.resolve())


def test_mismatched_shapes_fail_before_writing(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    wide = tiny_llama(tmp_path / "wide", seed=3, intermediate_size=80)
    with pytest.raises(MergeError, match=r"shape of 'model\.layers\.0\.mlp\.\w+_proj\.weight' differs"):
        merge_checkpoints([two_models[0], wide], [0.5, 0.5], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_mismatched_names_fail(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    deep = tiny_llama(tmp_path / "deep", seed=3, num_hidden_layers=3)
    with pytest.raises(MergeError, match=r"tensor names differ: .* has extra 'model\.layers\.2\."):
        merge_checkpoints([two_models[0], deep], [0.5, 0.5], tmp_path / "out")


def test_mismatched_dtypes_fail(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    f32 = tiny_llama(tmp_path / "f32", seed=3, dtype=torch.float32)
    with pytest.raises(MergeError, match=r"dtype of .* differs: BF16 .* F32"):
        merge_checkpoints([two_models[0], f32], [0.5, 0.5], tmp_path / "out")


def test_mismatched_architectures_fail(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    other = tiny_llama(tmp_path / "other", seed=3)
    config = json.loads((other / "config.json").read_text())
    config["architectures"] = ["MistralForCausalLM"]
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(MergeError, match="architectures differ"):
        merge_checkpoints([two_models[0], other], [0.5, 0.5], tmp_path / "out")


@pytest.mark.parametrize(
    ("weights", "message"),
    [([0.3], "got 1 weight"), ([0.3, 0.3, 0.4], "got 3 weight"), ([float("nan"), 1.0], "finite")],
)
def test_bad_weights_fail(two_models: tuple[Path, Path], tmp_path: Path, weights: list[float],
                          message: str) -> None:
    with pytest.raises(MergeError, match=message):
        merge_checkpoints(list(two_models), weights, tmp_path / "out")


def test_weights_not_summing_to_one_warn(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    report = merge_checkpoints(list(two_models), [0.5, 0.6], tmp_path / "out")
    assert any("sum to 1.1" in w for w in report.warnings)


@pytest.mark.slow
def test_cli_errors_are_one_line(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "engines.merge", str(two_models[0]), str(tmp_path / "nope"),
           "--weights", "0.5", "0.5", "--out", str(tmp_path / "out")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "not a directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_refuses_non_empty_output(two_models: tuple[Path, Path], tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("x")
    with pytest.raises(MergeError, match="not empty"):
        merge_checkpoints(list(two_models), [0.5, 0.5], tmp_path / "out")


MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    import psutil, torch
    from safetensors import safe_open
    from engines.merge import merge_checkpoints

    def peak_mb():  # the kernel's resident high-water mark of this process
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    mode, a, b, out = sys.argv[1:5]
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the high-water mark to the current resident size
    before = psutil.Process().memory_info().rss / 2**20
    if mode == "merge":
        merge_checkpoints([a, b], [0.3, 0.7], out, chunk_bytes=4 * 2**20)
    else:  # control: hold one whole shard, to show the probe sees shard-sized memory
        with safe_open(a + "/model-00001-of-00004.safetensors", framework="pt") as f:
            held = [f.get_tensor(k).clone() for k in f.keys()]
    print(json.dumps({"delta_mb": peak_mb() - before}))
    """
)


def synthetic_checkpoint(path: Path, seed: int, shards: int, tensors_per_shard: int) -> int:
    """A sharded checkpoint of 2 MiB float32 tensors; returns the shard size in bytes."""
    path.mkdir()
    gen = torch.Generator().manual_seed(seed)
    weight_map = {}
    for s in range(shards):
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        tensors = {f"layers.{s}.w{i}": torch.randn(512, 1024, generator=gen)
                   for i in range(tensors_per_shard)}
        save_file(tensors, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(tensors, file))
    (path / INDEX_FILE).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (path / "config.json").write_text(json.dumps({"architectures": ["Synthetic"], "model_type": "x"}))
    return tensors_per_shard * 512 * 1024 * 4


def run_probe(mode: str, a: Path, b: Path, out: Path) -> float:
    proc = subprocess.run([sys.executable, "-c", MEMORY_PROBE, mode, str(a), str(b), str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])["delta_mb"]


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
def test_peak_memory_stays_under_two_shards(tmp_path: Path) -> None:
    shard = synthetic_checkpoint(tmp_path / "a", 1, shards=4, tensors_per_shard=12)  # 24 MiB shards
    synthetic_checkpoint(tmp_path / "b", 2, shards=4, tensors_per_shard=12)
    shard_mb = shard / 2**20
    control = run_probe("hold", tmp_path / "a", tmp_path / "b", tmp_path / "unused")
    assert control >= 0.9 * shard_mb, f"probe blind: holding one shard showed {control:.1f} MiB"
    merged = run_probe("merge", tmp_path / "a", tmp_path / "b", tmp_path / "out")
    print(f"shard {shard_mb:.1f} MiB, holding one shard {control:.1f} MiB, merge peak {merged:.1f} MiB")
    assert merged < 2 * shard_mb, f"merge peak {merged:.1f} MiB vs shard {shard_mb:.1f} MiB"
    assert len(read_checkpoint(tmp_path / "out").files) == 4
