"""Engine build recipes: plain dataclasses loaded from TOML, checked before anything runs.

A recipe names the source checkpoint, the quantization, the drafter and the engine limits.
``validate`` returns every problem it finds as one line each; the build refuses to start while
there is any. Relative paths resolve against the current directory; ``${VAR}`` and ``~`` expand.
"""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.config import dataclass_from_table, read_toml

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKENDS = ("trt-engine", "trtllm-pytorch", "vllm")
# examples/quantization/quantize.py --qformat choices (TensorRT-LLM 1.2)
QFORMATS = ("fp8", "int8_wo", "int4_wo", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4", "full_prec")
CALIBRATED_QFORMATS = frozenset({"fp8", "int8_sq", "int4_awq", "w4a8_awq", "nvfp4"})
VLLM_QUANTIZATION = ("fp8", "none")  # online quantization of a BF16 checkpoint
DRAFTERS = ("none", "redrafter", "eagle3", "ngram")
DRAFTERS_BY_BACKEND = {
    "trt-engine": ("none", "redrafter"),  # ReDrafter exists only on the engine path, up to 1.2.x
    "trtllm-pytorch": ("none", "eagle3", "ngram"),
    "vllm": ("none", "eagle3", "ngram"),
}
DTYPES = ("auto", "bfloat16", "float16", "float32")
GEMM_PLUGINS = ("auto", "fp8", "bfloat16", "float16", "float32", "disable")


class RecipeError(ValueError):
    """A recipe file cannot be read; the message names the file and key."""


@dataclass
class ModelSection:
    """The Hugging Face checkpoint the engine is built from (a merged one, typically)."""

    path: str = ""
    work_dir: str = "build/engine"  # intermediate checkpoints, calibration set and the engine


@dataclass
class QuantizeSection:
    """``quantize.py`` settings; ``calib_from`` builds the calibration set from our own data."""

    qformat: str = "fp8"
    dtype: str = "auto"
    kv_cache_dtype: str | None = None  # "fp8" | "int8" | None
    calib_size: int = 4096
    calib_max_seq_length: int = 4096
    batch_size: int = 4
    calib_dataset: str | None = None  # an existing dataset directory with a "text" column
    calib_from: list[str] = field(default_factory=list)  # problem or drafter-data JSONL files
    prompt: str = "tir-toolcall"  # prompt profile used to render calibration texts


@dataclass
class DrafterSection:
    """Speculative decoding: ReDrafter (engine path), EAGLE-3 or n-gram (PyTorch, vLLM)."""

    kind: str = "none"
    path: str | None = None  # trained drafter checkpoint (redrafter, eagle3)
    num_beams: int = 1
    draft_len: int = 3  # tokens drafted per beam (ReDrafter) or per step (EAGLE-3, n-gram)
    greedy: bool = True  # ReDrafter: False builds with --redrafter_no_greedy_search
    trained_draft_len: int | None = None  # None: read from the drafter's directory name (_n_K_)
    max_matching_ngram_size: int = 3  # n-gram only


@dataclass
class EngineSection:
    """``trtllm-build`` limits and plugins (engine path); limits also go to the other backends."""

    max_batch_size: int = 32
    max_seq_len: int = 32000
    max_input_len: int | None = None  # None: max_seq_len
    max_num_tokens: int | None = None  # None: max_seq_len
    max_beam_width: int = 1
    gemm_plugin: str = "auto"
    use_paged_context_fmha: bool = True  # prefix reuse across the 12 streams of a problem
    kv_cache_type: str = "paged"
    tp_size: int = 1
    workers: int = 1
    extra_args: list[str] = field(default_factory=list)


@dataclass
class LimitsSection:
    """What the harness will ask of the engine; checked against the engine's limits."""

    max_prompt_tokens: int = 2048
    max_output_tokens: int = 28000
    num_streams: int = 12


@dataclass
class ToolsSection:
    """Where the TensorRT-LLM example scripts live (they are not in the wheel), the version the
    recipe targets and the recorded flags of its scripts (``engines/trtllm_flags/<name>.json``)."""

    trtllm_examples: str = "${TRTLLM_EXAMPLES}"
    python: str = ""  # interpreter for the scripts; empty: this one
    trtllm_version: str = ""  # the TensorRT-LLM release the recipe targets, e.g. "1.2.x"
    trtllm_flags: str = ""  # recorded flag set the planned commands are checked against


@dataclass
class Recipe:
    """One engine build."""

    name: str = ""
    description: str = ""
    backend: str = "trt-engine"
    model: ModelSection = field(default_factory=ModelSection)
    quantize: QuantizeSection = field(default_factory=QuantizeSection)
    drafter: DrafterSection = field(default_factory=DrafterSection)
    engine: EngineSection = field(default_factory=EngineSection)
    limits: LimitsSection = field(default_factory=LimitsSection)
    tools: ToolsSection = field(default_factory=ToolsSection)

    @property
    def max_input_len(self) -> int:
        return self.engine.max_input_len or self.engine.max_seq_len

    @property
    def draft_tokens(self) -> int:
        """Tokens one decoding step may add past the last accepted one (0 without a drafter)."""
        return 0 if self.drafter.kind == "none" else self.drafter.draft_len


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe TOML file, apply ``key.sub=value`` overrides (values in TOML syntax)."""
    p = Path(path)
    data = read_toml(p, "recipe", RecipeError)
    for item in overrides or []:
        _apply_override(data, item)
    data.setdefault("name", p.stem)
    try:
        return dataclass_from_table(Recipe, data, "", RecipeError)
    except RecipeError as exc:
        raise RecipeError(f"{p}: {exc}") from exc


def expand_path(value: str) -> Path:
    """``${VAR}`` and ``~`` expanded; an unset variable stays visible in the result."""
    return Path(os.path.expanduser(os.path.expandvars(value)))


def trained_draft_len(recipe: Recipe) -> int | None:
    """Draft length the drafter was trained for: the recipe's value, else its directory name."""
    if recipe.drafter.trained_draft_len is not None:
        return recipe.drafter.trained_draft_len
    if recipe.drafter.path:
        # train_redrafter names its output ..._n_{drafter_predict_n_tokens}_lr_..._layers_...
        m = re.search(r"_n_(\d+)_", expand_path(recipe.drafter.path).name + "_")
        if m:
            return int(m.group(1))
    return None


def validate(recipe: Recipe) -> list[str]:
    """Every reason this recipe cannot build, one line each (empty when it can)."""
    errors: list[str] = []
    errors += _check_choices(recipe)
    errors += _check_paths(recipe)
    errors += _check_drafter(recipe)
    errors += _check_limits(recipe)
    errors += _check_tools(recipe)
    return errors


def _check_choices(r: Recipe) -> list[str]:
    errors = []
    if r.backend not in BACKENDS:
        errors.append(f"backend: unknown {r.backend!r}; known: {', '.join(BACKENDS)}")
        return errors
    known_q = VLLM_QUANTIZATION if r.backend == "vllm" else QFORMATS
    if r.quantize.qformat not in known_q:
        errors.append(f"quantize.qformat: unknown quantization {r.quantize.qformat!r} for "
                      f"{r.backend}; known: {', '.join(known_q)}")
    if r.quantize.dtype not in DTYPES:
        errors.append(f"quantize.dtype: unknown {r.quantize.dtype!r}; known: {', '.join(DTYPES)}")
    if r.quantize.kv_cache_dtype not in (None, "fp8", "int8"):
        errors.append(f"quantize.kv_cache_dtype: {r.quantize.kv_cache_dtype!r} is not fp8 or int8")
    if r.drafter.kind not in DRAFTERS_BY_BACKEND[r.backend]:
        hint = " (ReDrafter needs the trt-engine backend, TensorRT-LLM <= 1.2.x)" if (
            r.drafter.kind == "redrafter") else ""
        errors.append(f"drafter.kind: {r.drafter.kind!r} is not available on {r.backend}; "
                      f"choose from {', '.join(DRAFTERS_BY_BACKEND[r.backend])}{hint}")
    if r.engine.gemm_plugin not in GEMM_PLUGINS:
        errors.append(f"engine.gemm_plugin: unknown {r.engine.gemm_plugin!r}")
    if r.engine.gemm_plugin == "fp8" and r.quantize.qformat != "fp8":
        errors.append(f"engine.gemm_plugin: fp8 needs quantize.qformat fp8, not {r.quantize.qformat!r}")
    if r.engine.kv_cache_type not in ("paged", "continuous"):
        errors.append(f"engine.kv_cache_type: {r.engine.kv_cache_type!r} is not paged or continuous")
    if r.engine.use_paged_context_fmha and r.engine.kv_cache_type != "paged":
        errors.append("engine.use_paged_context_fmha needs engine.kv_cache_type = \"paged\"")
    for name in ("max_batch_size", "max_seq_len", "max_beam_width", "tp_size", "workers"):
        if getattr(r.engine, name) < 1:
            errors.append(f"engine.{name}: must be >= 1, got {getattr(r.engine, name)}")
    if r.quantize.calib_size < 1 or r.quantize.batch_size < 1:
        errors.append("quantize.calib_size and quantize.batch_size must be >= 1")
    return errors


def _check_paths(r: Recipe) -> list[str]:
    errors = []
    if not r.model.path:
        return ["model.path: not set (the Hugging Face checkpoint to build from)"]
    model = expand_path(r.model.path)
    if not model.is_dir():
        errors.append(f"model.path: checkpoint directory {model} does not exist")
    elif not (model / "config.json").is_file():
        errors.append(f"model.path: {model} has no config.json (not a Hugging Face checkpoint)")
    elif not any(model.glob("*.safetensors")):
        errors.append(f"model.path: {model} has no *.safetensors weights")
    needs_calib = r.backend != "vllm" and r.quantize.qformat in CALIBRATED_QFORMATS
    if needs_calib:
        if r.quantize.calib_dataset and r.quantize.calib_from:
            errors.append("quantize: set calib_dataset or calib_from, not both")
        elif r.quantize.calib_dataset:
            if not expand_path(r.quantize.calib_dataset).is_dir():
                errors.append(f"quantize.calib_dataset: {expand_path(r.quantize.calib_dataset)} "
                              "is not a directory")
        elif not r.quantize.calib_from:
            errors.append(f"quantize: {r.quantize.qformat} needs calibration data: set "
                          "calib_from (problem or drafter-data JSONL) or calib_dataset")
        errors += [f"quantize.calib_from: {expand_path(f)} does not exist"
                   for f in r.quantize.calib_from if not expand_path(f).is_file()]
    return errors


def _check_drafter(r: Recipe) -> list[str]:
    d = r.drafter
    if d.kind in ("none", "ngram"):
        if d.kind == "ngram" and (d.draft_len < 1 or d.max_matching_ngram_size < 1):
            return ["drafter: n-gram draft_len and max_matching_ngram_size must be >= 1"]
        return []
    errors = []
    if not d.path:
        return [f"drafter.path: not set (the trained {d.kind} checkpoint)"]
    path = expand_path(d.path)
    if not path.is_dir():
        errors.append(f"drafter.path: drafter directory {path} does not exist")
    elif not (path / "config.json").is_file():
        errors.append(f"drafter.path: {path} has no config.json")
    if d.num_beams < 1 or d.draft_len < 1:
        errors.append(f"drafter: num_beams ({d.num_beams}) and draft_len ({d.draft_len}) must be >= 1")
    if d.kind == "redrafter":
        trained = trained_draft_len(r)
        if trained is not None and d.draft_len > trained:
            errors.append(f"drafter.draft_len: {d.draft_len} is larger than the {trained} tokens "
                          "the drafter was trained to predict")
        if path.is_dir() and (path / "config.json").is_file():
            errors += _check_redrafter_config(path)
    return errors


def _check_redrafter_config(path: Path) -> list[str]:
    try:
        config = json.loads((path / "config.json").read_text())
    except json.JSONDecodeError as exc:
        return [f"drafter.path: {path / 'config.json'} is not valid JSON ({exc})"]
    missing = [k for k in ("hidden_size", "exit_dim", "num_draft_layers", "rnn") if k not in config]
    if missing:
        return [f"drafter.path: {path / 'config.json'} lacks {missing}: not a ReDrafter checkpoint"]
    return []


def _check_tools(r: Recipe) -> list[str]:
    """The recipe names its TensorRT-LLM version and a flag set with every script it calls."""
    from engines.flags import load_flag_set

    if r.backend == "vllm" or r.backend not in BACKENDS:
        return []
    if not r.tools.trtllm_version:
        return ["tools.trtllm_version: not set (the TensorRT-LLM release this recipe targets)"]
    try:
        scripts = load_flag_set(r.tools.trtllm_flags)
    except ValueError as exc:
        return [f"tools.trtllm_flags: {exc}"]
    needed = {"trt-engine": ["quantize", "trtllm-build"] + (
        ["redrafter"] if r.drafter.kind == "redrafter" else [])}.get(r.backend, [])
    if r.backend == "trtllm-pytorch" and r.quantize.qformat != "full_prec":
        needed = ["quantize"]
    errors = [f"tools.trtllm_flags: {r.tools.trtllm_flags} records no {name} script"
              for name in needed if name not in scripts]
    quantize = scripts.get("quantize")
    if "quantize" in needed and quantize and r.backend == "trtllm-pytorch" and not quantize.has(
            "--export_format"):
        errors.append(
            f"tools.trtllm_flags: {quantize.path} at {quantize.commit[:8]} has no --export_format, "
            "so it cannot write the Hugging Face checkpoint the PyTorch backend loads: pin a flag "
            "set whose quantize.py has it, or export with ModelOpt yourself (not planned here)")
    redrafter = scripts.get("redrafter")
    if r.drafter.kind == "redrafter" and redrafter is not None:
        errors += _check_redrafter_base(r, redrafter.extra.get("architectures"), redrafter.path)
    return errors


def _check_redrafter_base(r: Recipe, supported: object, script: str) -> list[str]:
    """ReDrafter's convert_checkpoint.py maps only some base architectures (REDRAFTER_MAP): say so
    before the hour-long quantization, not after it."""
    if not isinstance(supported, list) or not r.model.path:
        return []
    try:
        config = json.loads((expand_path(r.model.path) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return []  # _check_paths reports a missing or broken checkpoint
    archs = config.get("architectures") or []
    if not any(a in supported for a in archs):
        return [f"model.path: ReDrafter ({script}) supports base architectures "
                f"{', '.join(supported)}, not {archs or 'an unnamed one'}"]
    return []


def _check_limits(r: Recipe) -> list[str]:
    errors = []
    e, lim = r.engine, r.limits
    need = lim.max_prompt_tokens + lim.max_output_tokens + r.draft_tokens
    if e.max_seq_len < need:
        errors.append(
            f"engine.max_seq_len: {e.max_seq_len} is below prompt + output + draft tokens "
            f"({lim.max_prompt_tokens} + {lim.max_output_tokens} + {r.draft_tokens} = {need})"
        )
    if r.max_input_len > e.max_seq_len:
        errors.append(f"engine.max_input_len: {r.max_input_len} exceeds max_seq_len {e.max_seq_len}")
    # a TIR stream resumes with its whole text as the prompt, so inputs grow to nearly max_seq_len
    if r.max_input_len < lim.max_prompt_tokens:
        errors.append(f"engine.max_input_len: {r.max_input_len} is below limits.max_prompt_tokens "
                      f"{lim.max_prompt_tokens}")
    if e.max_batch_size < lim.num_streams:
        errors.append(f"engine.max_batch_size: {e.max_batch_size} is below the {lim.num_streams} "
                      "streams solved at once")
    return errors


def _apply_override(data: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise RecipeError(f"--set {item!r}: expected KEY=VALUE, e.g. model.path=\"/models/x\"")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw  # a bare word or path: take it as a string
    *parents, leaf = key.strip().split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RecipeError(f"--set {item!r}: {part!r} is not a table")
    node[leaf] = value
