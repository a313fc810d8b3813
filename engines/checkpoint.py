"""Hugging Face safetensors checkpoints: read the layout without loading weights, stream shards out.

A checkpoint is a directory with ``config.json`` and either ``model.safetensors`` or sharded files
listed in ``model.safetensors.index.json``. Reading only touches headers; writing streams tensor
bytes into a file whose header is computed up front, so memory stays near one tensor chunk.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

# safetensors dtype names -> torch dtypes (the ones a language model checkpoint can hold)
TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
FLOAT_DTYPES = frozenset({"F64", "F32", "F16", "BF16"})
FP8_DTYPES = frozenset({"F8_E4M3", "F8_E5M2"})


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or inconsistent; the message says which."""


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives and what it is, read from a safetensors header."""

    file: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return _numel(self.shape) * torch.empty((), dtype=TORCH_DTYPES[self.dtype]).element_size()


@dataclass
class Checkpoint:
    """The layout of one checkpoint: its config and every tensor's file, dtype and shape."""

    path: Path
    config: dict[str, Any]
    files: list[str]  # weight files in storage order
    tensors: dict[str, TensorInfo]
    sharded: bool

    @property
    def architectures(self) -> list[str]:
        return list(self.config.get("architectures") or [])

    @property
    def total_bytes(self) -> int:
        return sum(t.nbytes for t in self.tensors.values())

    def names_in(self, file: str) -> list[str]:
        """Tensor names stored in one weight file, in header order."""
        return [name for name, info in self.tensors.items() if info.file == file]


def read_checkpoint(path: str | Path) -> Checkpoint:
    """Read config and tensor headers of a checkpoint directory (no tensor data is loaded)."""
    root = Path(path)
    if not root.is_dir():
        raise CheckpointError(f"{root}: not a directory")
    config_path = root / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{root}: no config.json (not a Hugging Face model directory)")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_path}: not valid JSON ({exc})") from exc

    index_path = root / INDEX_FILE
    if index_path.is_file():
        try:
            weight_map: dict[str, str] = json.loads(index_path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{index_path}: no usable weight_map ({exc})") from exc
        files = list(dict.fromkeys(weight_map.values()))
        sharded = True
    elif (root / SINGLE_FILE).is_file():
        weight_map, files, sharded = {}, [SINGLE_FILE], False
    else:
        raise CheckpointError(
            f"{root}: no {SINGLE_FILE} or {INDEX_FILE} (only safetensors checkpoints are supported)"
        )

    tensors: dict[str, TensorInfo] = {}
    for file in files:
        for name, dtype, shape in _read_header(root / file):
            if sharded and weight_map.get(name) != file:
                raise CheckpointError(
                    f"{root / file}: tensor {name!r} is not mapped to this file by {INDEX_FILE}"
                )
            tensors[name] = TensorInfo(file, dtype, shape)
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
        raise CheckpointError(
            f"{root}: {INDEX_FILE} lists {len(missing)} tensor(s) absent from the shards, "
            f"first {missing[0]!r}"
        )
    return Checkpoint(root, config, files, tensors, sharded)


def _read_header(path: Path) -> Iterator[tuple[str, str, tuple[int, ...]]]:
    if not path.is_file():
        raise CheckpointError(f"{path}: weight file is missing")
    try:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open is not a mapping
                piece = f.get_slice(name)
                yield name, piece.get_dtype(), tuple(piece.get_shape())
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: cannot read safetensors header ({exc})") from exc


def read_chunks(
    handle: Any, name: str, info: TensorInfo, chunk_bytes: int
) -> Iterator[torch.Tensor]:
    """Yield a tensor as row blocks of at most ``chunk_bytes`` (whole when it is small or 0-d)."""
    if info.nbytes <= chunk_bytes or len(info.shape) == 0 or info.shape[0] <= 1:
        yield handle.get_tensor(name)
        return
    row_bytes = max(1, info.nbytes // info.shape[0])
    rows = max(1, chunk_bytes // row_bytes)
    piece = handle.get_slice(name)
    for start in range(0, info.shape[0], rows):
        yield piece[start : start + rows]


class ShardWriter:
    """Write one safetensors file tensor by tensor, in a declared order, without holding it whole.

    The header (names, dtypes, shapes, offsets) is known before any data, so it is written first
    and each tensor's bytes follow in order. The file appears under its final name only on
    ``close()``, so a crash never leaves a truncated shard that looks complete.
    """

    def __init__(
        self,
        path: Path,
        entries: list[tuple[str, str, tuple[int, ...]]],
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.path = path
        self._tmp = path.with_name(path.name + ".partial")
        self._entries = entries
        self._sizes: list[int] = []
        header: dict[str, Any] = {"__metadata__": dict(metadata or {"format": "pt"})}
        offset = 0
        for name, dtype, shape in entries:
            size = TensorInfo("", dtype, shape).nbytes
            header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
            self._sizes.append(size)
            offset += size
        blob = json.dumps(header, separators=(",", ":")).encode()
        blob += b" " * (-len(blob) % 8)  # the data section starts 8-byte aligned
        self._file = self._tmp.open("wb")
        self._file.write(struct.pack("<Q", len(blob)))
        self._file.write(blob)
        self._next = 0
        self._written = 0  # bytes of the current tensor written so far

    def write(self, name: str, data: torch.Tensor) -> None:
        """Append bytes of tensor ``name`` (whole, or one row block after another)."""
        if self._next >= len(self._entries) or self._entries[self._next][0] != name:
            expected = self._entries[self._next][0] if self._next < len(self._entries) else None
            raise RuntimeError(f"{self.path.name}: wrote {name!r}, expected {expected!r}")
        dtype = TORCH_DTYPES[self._entries[self._next][1]]
        if data.dtype != dtype:
            raise RuntimeError(f"{self.path.name}: {name!r} has dtype {data.dtype}, header says {dtype}")
        raw = data.contiguous().reshape(-1).view(torch.uint8).numpy()
        self._file.write(memoryview(raw))
        self._written += raw.nbytes
        size = self._sizes[self._next]
        if self._written > size:
            raise RuntimeError(f"{self.path.name}: {name!r} got more bytes than its shape holds")
        if self._written == size:
            self._next += 1
            self._written = 0

    def close(self) -> None:
        """Check every declared tensor was written in full, then publish the file."""
        while self._next < len(self._entries) and self._sizes[self._next] == 0:
            self._next += 1  # empty tensors have no bytes to write
        self._file.close()
        if self._next != len(self._entries):
            self._tmp.unlink(missing_ok=True)
            raise RuntimeError(f"{self.path.name}: {self._entries[self._next][0]!r} was not written")
        self._tmp.replace(self.path)

    def abort(self) -> None:
        """Drop the partial file (after an error)."""
        self._file.close()
        self._tmp.unlink(missing_ok=True)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
