"""The recorded argument lists of TensorRT-LLM's build scripts, and planned commands checked
against them before anything runs.

The scripts' flags change between TensorRT-LLM versions (``quantize.py`` gained and lost
``--export_format``; its ``--qformat`` choices moved), so each recipe names a flag set:
``engines/trtllm_flags/<name>.json``, read from the scripts at the source commit it records.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

FLAGS_DIR = Path(__file__).parent / "trtllm_flags"
SWITCH = "switch"  # a flag that takes no value (argparse store_true / store_false)


@dataclass(frozen=True)
class ScriptFlags:
    """One script's flags at one commit: each takes a value, is a switch, or has choices."""

    script: str  # "quantize" | "redrafter" | "trtllm-build"
    path: str
    commit: str
    flags: dict[str, str | list[str]]
    extra: dict[str, object] = field(default_factory=dict)

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def check(self, argv: Sequence[str]) -> list[str]:
        """Why these arguments would not parse, one line each (empty when they would)."""
        errors: list[str] = []
        where = f"{self.path} at {self.commit[:8]}"
        i = 0
        while i < len(argv):
            arg = argv[i]
            i += 1
            if not arg.startswith("--"):
                errors.append(f"{where}: unexpected argument {arg!r}")
                continue
            flag, eq, inline = arg.partition("=")
            spec = self.flags.get(flag)
            if spec is None:
                errors.append(f"{where} has no {flag} flag")
                continue
            if spec == SWITCH:
                if eq:
                    errors.append(f"{where}: {flag} takes no value")
                continue
            if eq:
                value: str | None = inline
            elif i < len(argv) and not argv[i].startswith("--"):
                value, i = argv[i], i + 1
            else:
                value = None
            if value is None:
                errors.append(f"{where}: {flag} needs a value")
            elif isinstance(spec, list) and value not in spec:
                errors.append(f"{where}: {flag} {value!r} is not one of {', '.join(spec)}")
        return errors


def flag_sets() -> list[str]:
    """Names of the recorded flag sets."""
    return sorted(p.stem for p in FLAGS_DIR.glob("*.json"))


def load_flag_set(name: str) -> dict[str, ScriptFlags]:
    """The scripts of one recorded flag set; an unknown name lists the known ones."""
    path = FLAGS_DIR / f"{name}.json"
    if not name or not path.is_file():
        raise ValueError(f"unknown TensorRT-LLM flag set {name!r}; recorded: {', '.join(flag_sets())}")
    data = json.loads(path.read_text())
    scripts = {}
    for script, entry in data["scripts"].items():
        extra = {k: v for k, v in entry.items() if k not in ("path", "commit", "flags")}
        scripts[script] = ScriptFlags(script, entry["path"], entry["commit"], entry["flags"], extra)
    return scripts
