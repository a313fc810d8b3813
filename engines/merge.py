"""Linear merge of Hugging Face checkpoints: ``w = sum_i a_i * M_i``, tensor by tensor.

The winning AIMO-2 model was ``0.3 x CoT + 0.7 x TIR``. Each output tensor is accumulated in
float32 (float64 for F64 tensors) in the order the models are given, each term rounded to
float32 before the sum, and cast back to the checkpoint dtype with round-to-nearest-even:
``cast(fl32(a_0)*fl32(T_0) + fl32(a_1)*fl32(T_1) + ...)``. Large tensors are processed in row
blocks and streamed to disk, so memory stays near one block whatever the shard size.

    python -m engines.merge COT_DIR TIR_DIR --weights 0.3 0.7 --out MERGED_DIR
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from aimo_infer.manifest import MANIFEST_NAME, EngineManifest, write_manifest
from engines.checkpoint import (
    FLOAT_DTYPES,
    FP8_DTYPES,
    INDEX_FILE,
    TORCH_DTYPES,
    Checkpoint,
    CheckpointError,
    ShardWriter,
    read_checkpoint,
    read_chunks,
)

DEFAULT_CHUNK_BYTES = 64 * 2**20
# Weight files are produced by the merge; everything else at the top level (config, tokenizer,
# generation config, chat template) is copied from the first model.
_NOT_COPIED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".partial", ".msgpack", ".h5")
_NOT_COPIED_NAMES = frozenset({INDEX_FILE, "pytorch_model.bin.index.json", MANIFEST_NAME})
# Config keys that may differ between fine-tunes of one base model without changing the weights.
_CONFIG_KEYS_IGNORED = frozenset({"_name_or_path", "transformers_version", "use_cache", "dtype", "torch_dtype"})


class MergeError(ValueError):
    """The inputs cannot be merged; the message is one line naming the offending model or tensor."""


@dataclass
class MergeReport:
    """What a merge produced."""

    out: Path
    num_tensors: int
    total_bytes: int
    files: list[str]
    seconds: float
    warnings: list[str] = field(default_factory=list)


def check_weights(weights: Sequence[float], num_models: int) -> list[str]:
    """Validate merge weights; return warnings (a sum other than 1 is allowed but unusual)."""
    if num_models < 2:
        raise MergeError(f"need at least 2 models to merge, got {num_models}")
    if len(weights) != num_models:
        raise MergeError(f"got {len(weights)} weight(s) for {num_models} models; give one per model")
    bad = [w for w in weights if not math.isfinite(w)]
    if bad:
        raise MergeError(f"weights must be finite numbers, got {bad[0]}")
    total = math.fsum(weights)
    if abs(total - 1.0) > 1e-6:
        return [f"weights sum to {total:g}, not 1: the merged weights are rescaled"]
    return []


def check_compatible(checkpoints: Sequence[Checkpoint]) -> list[str]:
    """Require equal architectures, tensor names, shapes and dtypes; warn on other config drift."""
    first = checkpoints[0]
    warnings: list[str] = []
    for other in checkpoints[1:]:
        if other.architectures != first.architectures:
            raise MergeError(
                f"architectures differ: {first.path} is {first.architectures}, "
                f"{other.path} is {other.architectures}"
            )
        if other.config.get("model_type") != first.config.get("model_type"):
            raise MergeError(
                f"model_type differs: {first.path} is {first.config.get('model_type')!r}, "
                f"{other.path} is {other.config.get('model_type')!r}"
            )
        missing = sorted(set(first.tensors) - set(other.tensors))
        extra = sorted(set(other.tensors) - set(first.tensors))
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"lacks {_first_of(missing)}")
            if extra:
                parts.append(f"has extra {_first_of(extra)}")
            raise MergeError(f"tensor names differ: {other.path} {' and '.join(parts)} vs {first.path}")
        for name, info in sorted(first.tensors.items()):
            theirs = other.tensors[name]
            if theirs.shape != info.shape:
                raise MergeError(
                    f"shape of {name!r} differs: {list(info.shape)} in {first.path}, "
                    f"{list(theirs.shape)} in {other.path}"
                )
            if theirs.dtype != info.dtype:
                raise MergeError(
                    f"dtype of {name!r} differs: {info.dtype} in {first.path}, "
                    f"{theirs.dtype} in {other.path} (convert one model first)"
                )
        drift = sorted(
            k for k in set(first.config) | set(other.config)
            if k not in _CONFIG_KEYS_IGNORED and first.config.get(k) != other.config.get(k)
        )
        if drift:
            warnings.append(f"config of {other.path} differs in {drift}; the first model's is kept")
    fp8 = sorted(name for name, info in first.tensors.items() if info.dtype in FP8_DTYPES)
    if fp8:
        raise MergeError(f"tensor {fp8[0]!r} is FP8: merge the unquantized models, then quantize")
    return warnings


def merge_checkpoints(
    sources: Sequence[str | Path],
    weights: Sequence[float],
    out: str | Path,
    *,
    overwrite: bool = False,
    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    log: Any = None,
) -> MergeReport:
    """Merge ``sources`` with ``weights`` into ``out``; all layout checks run before any write."""
    started = time.monotonic()
    warnings = check_weights(weights, len(sources))
    try:
        checkpoints = [read_checkpoint(s) for s in sources]
    except CheckpointError as exc:
        raise MergeError(str(exc)) from exc
    warnings += check_compatible(checkpoints)
    out_dir = Path(out)
    _check_output(out_dir, checkpoints, overwrite)
    for w in warnings:
        _log(log, f"warning: {w}")

    out_dir.mkdir(parents=True, exist_ok=True)
    first = checkpoints[0]
    scales = [torch.tensor(w, dtype=torch.float32) for w in weights]
    for file in first.files:
        _merge_file(checkpoints, scales, file, out_dir / file, chunk_bytes)
        _log(log, f"wrote {out_dir / file}")
    if first.sharded:
        _write_index(first, out_dir)
    _copy_aux_files(first.path, out_dir)
    write_manifest(out_dir, _manifest(checkpoints, weights, out_dir))
    return MergeReport(
        out=out_dir,
        num_tensors=len(first.tensors),
        total_bytes=first.total_bytes,
        files=list(first.files),
        seconds=time.monotonic() - started,
        warnings=warnings,
    )


def _merge_file(
    checkpoints: Sequence[Checkpoint],
    scales: Sequence[torch.Tensor],
    file: str,
    out_path: Path,
    chunk_bytes: int,
) -> None:
    """Write one output file with the tensors the first model keeps in ``file``."""
    first = checkpoints[0]
    names = first.names_in(file)
    entries = [(n, first.tensors[n].dtype, first.tensors[n].shape) for n in names]
    writer = ShardWriter(out_path, entries)
    try:
        for name in names:
            # One short-lived handle per model and tensor: safetensors maps files into memory,
            # and a long-lived handle keeps every page it has touched resident.
            with ExitStack() as stack:
                handles = [
                    stack.enter_context(safe_open(str(c.path / c.tensors[name].file), framework="pt"))
                    for c in checkpoints
                ]
                streams = [
                    read_chunks(h, name, c.tensors[name], chunk_bytes)
                    for h, c in zip(handles, checkpoints, strict=True)
                ]
                for parts in zip(*streams, strict=True):
                    writer.write(name, _combine(name, first.tensors[name].dtype, parts, scales))
                    del parts
        writer.close()
    except BaseException:
        writer.abort()
        raise


def _combine(
    name: str, dtype: str, parts: Sequence[torch.Tensor], scales: Sequence[torch.Tensor]
) -> torch.Tensor:
    """Weighted sum of one block from every model, rounded back to the checkpoint dtype."""
    if dtype not in FLOAT_DTYPES:
        # Integer and boolean buffers (position ids, masks) cannot be averaged: they must agree.
        if any(not torch.equal(parts[0], p) for p in parts[1:]):
            raise MergeError(f"tensor {name!r} is {dtype} and differs between models: cannot merge it")
        return parts[0]
    acc_dtype = torch.float64 if dtype == "F64" else torch.float32
    acc = parts[0].to(acc_dtype).mul_(scales[0].to(acc_dtype))
    for part, scale in zip(parts[1:], scales[1:], strict=True):
        acc.add_(part.to(acc_dtype).mul_(scale.to(acc_dtype)))
    return acc.to(TORCH_DTYPES[dtype])


def _check_output(out: Path, checkpoints: Sequence[Checkpoint], overwrite: bool) -> None:
    resolved = out.resolve()
    for c in checkpoints:
        if c.path.resolve() == resolved:
            raise MergeError(f"--out {out} is one of the input models")
    if out.exists() and not out.is_dir():
        raise MergeError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MergeError(f"--out {out} is not empty (pass --overwrite to replace its files)")


def _write_index(first: Checkpoint, out: Path) -> None:
    index = {
        "metadata": {"total_size": first.total_bytes},
        "weight_map": {name: info.file for name, info in first.tensors.items()},
    }
    tmp = out / (INDEX_FILE + ".partial")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    tmp.replace(out / INDEX_FILE)


def _copy_aux_files(src: Path, out: Path) -> None:
    for path in sorted(src.iterdir()):
        if path.is_file() and path.name not in _NOT_COPIED_NAMES and not path.name.endswith(
            _NOT_COPIED_SUFFIXES
        ):
            shutil.copy2(path, out / path.name)


def _manifest(checkpoints: Sequence[Checkpoint], weights: Sequence[float], out: Path) -> EngineManifest:
    config = checkpoints[0].config
    return EngineManifest(
        model=str(out.resolve()),
        backend="hf",
        merge={str(c.path.resolve()): float(w) for c, w in zip(checkpoints, weights, strict=True)},
        quantization=None,
        build_flags={"merge": "linear", "accumulate": "float32"},
        versions=package_versions("torch", "safetensors", "transformers"),
        tokenizer_path=str(out.resolve()),
        max_seq_len=config.get("max_position_embeddings"),
    )


def package_versions(*names: str) -> dict[str, str]:
    """Installed versions of the named packages (absent ones are left out)."""
    found: dict[str, str] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def _first_of(names: list[str]) -> str:
    more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
    return f"{names[0]!r}{more}"


def _log(log: Any, message: str) -> None:
    if log is not None:
        print(message, file=log)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m engines.merge",
        description="Linear merge of safetensors checkpoints (e.g. 0.3 x CoT + 0.7 x TIR).",
    )
    parser.add_argument("models", nargs="+", help="model directories (config.json + safetensors)")
    parser.add_argument("--weights", nargs="+", type=float, required=True, help="one weight per model")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--overwrite", action="store_true", help="allow a non-empty --out")
    parser.add_argument(
        "--chunk-mb", type=int, default=DEFAULT_CHUNK_BYTES // 2**20,
        help="largest block of one tensor held in memory at once (MiB)",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        report = merge_checkpoints(
            args.models, args.weights, args.out,
            overwrite=args.overwrite, chunk_bytes=max(1, args.chunk_mb) * 2**20, log=sys.stderr,
        )
    except MergeError as exc:
        print(f"merge: error: {exc}", file=sys.stderr)
        return 2
    print(
        f"merged {report.num_tensors} tensors ({report.total_bytes / 2**30:.2f} GiB) "
        f"from {len(args.models)} models into {report.out} in {report.seconds:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
