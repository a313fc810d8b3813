"""``engine.json``: what an engine build produced, read by the harness to configure its adapter."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from aimo_infer.errors import DataError

MANIFEST_NAME = "engine.json"


@dataclass
class EngineManifest:
    """Written by ``engines.build`` (and ``engines.merge``) next to the artefact it describes."""

    model: str  # source checkpoint (path or name)
    backend: str  # "trt-engine" | "trtllm-pytorch" | "vllm" | "hf"
    merge: dict[str, float] = field(default_factory=dict)  # source path -> weight
    quantization: str | None = None  # "fp8" | "int8_wo" | None
    drafter: dict[str, object] = field(default_factory=dict)  # kind, num_beams, draft_len, greedy
    # trt-engine: the trtllm-build flags; vllm / trtllm-pytorch: load options in the engine's
    # own names (AsyncEngineArgs / LLM), read back by the adapters through load_options.
    build_flags: dict[str, object] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    tokenizer_path: str | None = None
    max_seq_len: int | None = None
    max_batch_size: int | None = None

    @property
    def greedy_drafter(self) -> bool:
        """A greedy ReDrafter engine ignores temperature: every seed gives the same stream."""
        return self.drafter.get("kind") == "redrafter" and bool(self.drafter.get("greedy", True))


def write_manifest(directory: str | Path, manifest: EngineManifest) -> Path:
    """Write ``engine.json`` atomically (a crash never leaves half a file)."""
    path = Path(directory) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)
    return path


def load_manifest(directory: str | Path) -> EngineManifest | None:
    """Read ``engine.json`` from a directory; None when there is none. Unknown keys are ignored."""
    path = Path(directory) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from exc
    known = {f.name for f in fields(EngineManifest)}
    missing = {"model", "backend"} - data.keys()
    if missing:
        raise DataError(f"{path}: missing required keys {sorted(missing)}")
    return EngineManifest(**{k: v for k, v in data.items() if k in known})


def load_options(manifest: EngineManifest | None, backend: str) -> dict[str, object]:
    """The load options ``engine.json`` records for an engine of ``backend``, in that engine's
    own argument names (``AsyncEngineArgs`` for vllm, ``LLM`` for trtllm-pytorch); none for a
    manifest of another backend or a prebuilt engine, whose build flags are baked in."""
    if manifest is None or manifest.backend != backend or backend in ("trt-engine", "hf"):
        return {}
    return dict(manifest.build_flags)
