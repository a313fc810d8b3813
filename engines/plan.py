"""Turn a validated recipe into the ordered commands of a build and the manifest it will write.

Pure: nothing here runs or writes. The order is the published AIMO-2 one: calibration set,
``quantize.py``, ReDrafter ``convert_checkpoint.py``, ``trtllm-build``; other backends stop
after quantization (TensorRT-LLM PyTorch) or need no command at all (vLLM quantizes online).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aimo_infer.manifest import MANIFEST_NAME, EngineManifest, load_manifest
from engines.flags import load_flag_set
from engines.recipe import CALIBRATED_QFORMATS, Recipe, expand_path, trained_draft_len


@dataclass(frozen=True)
class Step:
    """One command of a build and the directory it produces."""

    name: str
    argv: tuple[str, ...]
    output: Path

    def shell(self) -> str:
        return shell_command(self.argv)


def shell_command(argv: Sequence[str]) -> str:
    """A command as a copy-pasteable shell line, each flag on its own continuation line."""
    parts: list[str] = []
    for arg in argv:
        quoted = shlex.quote(arg)
        if arg.startswith("--") and parts:
            parts.append(" \\\n    " + quoted)
        else:
            parts.append((" " if parts else "") + quoted)
    return "".join(parts)


@dataclass
class BuildPlan:
    """Everything a build will do, in order, and what it will record."""

    recipe: Recipe
    steps: list[Step]
    engine_dir: Path
    manifest: EngineManifest
    notes: list[str] = field(default_factory=list)

    @property
    def manifest_path(self) -> Path:
        return self.engine_dir / MANIFEST_NAME

    def render(self) -> str:
        """Human-readable plan: numbered commands, then the manifest that will be written."""
        lines = [f"# build plan: {self.recipe.name} ({self.recipe.backend})"]
        lines += [f"# note: {n}" for n in self.notes]
        for i, step in enumerate(self.steps, 1):
            lines += ["", f"# step {i}/{len(self.steps)}: {step.name} -> {step.output}", step.shell()]
        lines += ["", f"# then write {self.manifest_path}:",
                  json.dumps(self.manifest.__dict__, indent=2, sort_keys=True)]
        return "\n".join(lines)


def make_plan(recipe: Recipe) -> BuildPlan:
    """Commands and manifest for ``recipe`` (validate it first: this assumes it is sound)."""
    model = expand_path(recipe.model.path).resolve()
    work = expand_path(recipe.model.work_dir).resolve()
    python = recipe.tools.python or sys.executable
    examples = expand_path(recipe.tools.trtllm_examples)
    q = recipe.quantize
    steps: list[Step] = []
    notes: list[str] = []

    calib_dir: Path | None = None
    if recipe.backend != "vllm" and q.qformat in CALIBRATED_QFORMATS:
        if q.calib_dataset:
            calib_dir = expand_path(q.calib_dataset).resolve()
        else:
            calib_dir = work / "calibration"
            steps.append(calibration_step(recipe, python, model, calib_dir))

    checkpoint = model
    if recipe.backend == "trt-engine":
        checkpoint = work / "base-ckpt"
        steps.append(quantize_step(recipe, python, examples, model, calib_dir, checkpoint))
        if recipe.drafter.kind == "redrafter":
            drafter_ckpt = work / "redrafter-ckpt"
            steps.append(redrafter_step(recipe, python, examples, model, checkpoint, drafter_ckpt))
            checkpoint = drafter_ckpt
        engine_dir = work / "engine"
        steps.append(Step("trtllm-build", ("trtllm-build", *trtllm_build_args(recipe, checkpoint,
                                                                              engine_dir)), engine_dir))
    elif recipe.backend == "trtllm-pytorch" and q.qformat != "full_prec":
        engine_dir = work / f"checkpoint-{q.qformat}"
        steps.append(quantize_step(recipe, python, examples, model, calib_dir, engine_dir))
    else:
        engine_dir = work  # the HF checkpoint is loaded as is (vLLM quantizes it when it loads)

    if recipe.drafter.kind == "redrafter":
        if recipe.drafter.greedy:
            notes.append("greedy ReDrafter: the engine ignores temperature, so every seed gives the "
                         "same stream (drafter.greedy = false builds with --redrafter_no_greedy_search)")
        if trained_draft_len(recipe) is None:
            notes.append("the drafter's trained draft length is unknown (set drafter.trained_draft_len)"
                         ": draft_len cannot be checked against it")
    if recipe.backend != "vllm" and "${" in str(examples):
        notes.append(f"tools.trtllm_examples is {examples}: set TRTLLM_EXAMPLES to the TensorRT-LLM "
                     "examples/ directory before running")
    weights_dir = engine_dir if recipe.backend == "trtllm-pytorch" and steps else model
    return BuildPlan(recipe, steps, engine_dir, build_manifest(recipe, model, weights_dir), notes)


def check_plan(plan: BuildPlan) -> list[str]:
    """Every planned TensorRT-LLM command checked against its script's recorded flags (the
    recipe's ``tools.trtllm_flags``), one line per problem."""
    if not any(step.name in ("quantize", "redrafter", "trtllm-build") for step in plan.steps):
        return []
    try:
        scripts = load_flag_set(plan.recipe.tools.trtllm_flags)
    except ValueError as exc:
        return [f"tools.trtllm_flags: {exc}"]
    errors = []
    for step in plan.steps:
        if step.name not in ("quantize", "redrafter", "trtllm-build"):
            continue
        script = scripts.get(step.name)
        if script is None:
            errors.append(f"step {step.name}: {plan.recipe.tools.trtllm_flags} records no such script")
            continue
        args = step.argv[1:] if step.name == "trtllm-build" else step.argv[2:]
        errors += [f"step {step.name}: {e}" for e in script.check(args)]
    return errors


def calibration_step(recipe: Recipe, python: str, model: Path, out: Path) -> Step:
    q = recipe.quantize
    argv = (python, "-m", "engines.calibration",
            *(str(expand_path(f).resolve()) for f in q.calib_from),
            "--tokenizer", str(model), "--prompt", q.prompt, "--size", str(q.calib_size),
            "--out", str(out))
    return Step("calibration", argv, out)


def quantize_step(recipe: Recipe, python: str, examples: Path, model: Path,
                  calib_dir: Path | None, out: Path) -> Step:
    q = recipe.quantize
    argv = [python, str(examples / "quantization" / "quantize.py"), "--model_dir", str(model),
            "--dtype", q.dtype, "--qformat", q.qformat]
    if q.kv_cache_dtype:
        argv += ["--kv_cache_dtype", q.kv_cache_dtype]
    if calib_dir is not None:
        argv += ["--calib_dataset", str(calib_dir), "--calib_size", str(q.calib_size),
                 "--calib_max_seq_length", str(q.calib_max_seq_length),
                 "--batch_size", str(q.batch_size)]
    argv += ["--tp_size", str(recipe.engine.tp_size)]
    if recipe.backend == "trtllm-pytorch":
        argv += ["--export_format", "hf"]
    argv += ["--output_dir", str(out)]
    return Step("quantize", tuple(argv), out)


def redrafter_step(recipe: Recipe, python: str, examples: Path, model: Path, base: Path,
                   out: Path) -> Step:
    d = recipe.drafter
    argv = [python, str(examples / "redrafter" / "convert_checkpoint.py"),
            "--base_model_checkpoint_dir", str(base),
            "--drafter_model_dir", str(expand_path(d.path or "").resolve()),
            "--output_dir", str(out), "--dtype", activation_dtype(recipe, model),
            "--tp_size", str(recipe.engine.tp_size),
            "--redrafter_num_beams", str(d.num_beams),
            "--redrafter_draft_len_per_beam", str(d.draft_len)]
    if not d.greedy:
        argv.append("--redrafter_no_greedy_search")
    return Step("redrafter", tuple(argv), out)


def trtllm_build_flags(recipe: Recipe) -> dict[str, str]:
    """The ``trtllm-build`` flags that shape the engine, in command order."""
    e = recipe.engine
    flags = {
        "gemm_plugin": e.gemm_plugin,
        "use_paged_context_fmha": "enable" if e.use_paged_context_fmha else "disable",
        "max_batch_size": str(e.max_batch_size),
        "max_seq_len": str(e.max_seq_len),
        "max_input_len": str(recipe.max_input_len),
        "max_num_tokens": str(e.max_num_tokens or e.max_seq_len),
        "max_beam_width": str(e.max_beam_width),
    }
    if recipe.drafter.kind == "redrafter":
        flags["speculative_decoding_mode"] = "explicit_draft_tokens"
    flags["kv_cache_type"] = e.kv_cache_type
    flags["workers"] = str(e.workers)
    return flags


def trtllm_build_args(recipe: Recipe, checkpoint: Path, out: Path) -> list[str]:
    args = ["--checkpoint_dir", str(checkpoint), "--output_dir", str(out)]
    for key, value in trtllm_build_flags(recipe).items():
        # written as one token, the way the published recipe spells it
        args += [f"--{key}={value}"] if key == "use_paged_context_fmha" else [f"--{key}", value]
    return [*args, *recipe.engine.extra_args]


def activation_dtype(recipe: Recipe, model: Path) -> str:
    """The drafter must be converted in the base model's dtype: the recipe's, else the config's."""
    if recipe.quantize.dtype != "auto":
        return recipe.quantize.dtype
    try:
        config = json.loads((model / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "bfloat16"
    dtype = config.get("torch_dtype") or config.get("dtype") or "bfloat16"
    return dtype if dtype in ("bfloat16", "float16") else "bfloat16"


def build_manifest(recipe: Recipe, model: Path, weights: Path) -> EngineManifest:
    """The ``engine.json`` a successful build writes (versions are added when it runs)."""
    source = load_manifest(model) if (model / MANIFEST_NAME).is_file() else None
    q = recipe.quantize.qformat
    return EngineManifest(
        model=str(weights),
        backend=recipe.backend,
        merge=dict(source.merge) if source else {},
        quantization=None if q in ("full_prec", "none") else q,
        drafter=drafter_settings(recipe),
        build_flags=backend_flags(recipe),
        versions={},
        tokenizer_path=str(model),
        max_seq_len=recipe.engine.max_seq_len,
        max_batch_size=recipe.engine.max_batch_size,
    )


def drafter_settings(recipe: Recipe) -> dict[str, object]:
    d = recipe.drafter
    if d.kind == "none":
        return {}
    settings: dict[str, object] = {"kind": d.kind, "draft_len": d.draft_len}
    if d.kind == "redrafter":
        settings.update(num_beams=d.num_beams, greedy=d.greedy,
                        trained_draft_len=trained_draft_len(recipe))
    if d.kind in ("redrafter", "eagle3"):
        settings["path"] = str(expand_path(d.path or "").resolve())
    if d.kind == "ngram":
        settings["max_matching_ngram_size"] = d.max_matching_ngram_size
    return settings


def backend_flags(recipe: Recipe) -> dict[str, object]:
    """The settings that shape the engine: the trtllm-build flags of an engine, else the load
    options the adapter passes on, in the engine's own argument names."""
    if recipe.backend == "trt-engine":
        return {**trtllm_build_flags(recipe), "extra_args": list(recipe.engine.extra_args)}
    if recipe.backend == "vllm":
        return vllm_load_options(recipe)
    return trtllm_load_options(recipe)


def vllm_load_options(recipe: Recipe) -> dict[str, object]:
    """``AsyncEngineArgs`` fields (vllm/engine/arg_utils.py) and ``SpeculativeConfig`` fields
    (vllm/config/speculative.py: the n-gram window is prompt_lookup_min/max)."""
    e, d = recipe.engine, recipe.drafter
    options: dict[str, object] = {"max_model_len": e.max_seq_len, "max_num_seqs": e.max_batch_size,
                                  "tensor_parallel_size": e.tp_size, "enable_prefix_caching": True}
    if recipe.quantize.qformat == "fp8":
        options["quantization"] = "fp8"
    if d.kind == "eagle3":
        options["speculative_config"] = {"method": "eagle3", "num_speculative_tokens": d.draft_len,
                                         "model": str(expand_path(d.path or "").resolve())}
    elif d.kind == "ngram":
        options["speculative_config"] = {"method": "ngram", "num_speculative_tokens": d.draft_len,
                                         "prompt_lookup_max": d.max_matching_ngram_size,
                                         "prompt_lookup_min": 1}
    return options


def trtllm_load_options(recipe: Recipe) -> dict[str, object]:
    """TensorRT-LLM ``LLM`` arguments (llmapi/llm_args.py) with ``speculative_config`` as the
    adapter's table (``decoding_type`` names the config class). The KV cache reuses prefixes by
    default (``KvCacheConfig.enable_block_reuse``): there is no enable_prefix_caching here."""
    e, d = recipe.engine, recipe.drafter
    options: dict[str, object] = {"max_seq_len": e.max_seq_len, "max_batch_size": e.max_batch_size,
                                  "tensor_parallel_size": e.tp_size}
    if d.kind == "eagle3":
        options["speculative_config"] = {"decoding_type": "Eagle", "max_draft_len": d.draft_len,
                                         "speculative_model_dir": str(expand_path(d.path or "")
                                                                      .resolve()),
                                         "eagle3_one_model": True}
    elif d.kind == "ngram":
        options["speculative_config"] = {"decoding_type": "NGram", "max_draft_len": d.draft_len,
                                         "max_matching_ngram_size": d.max_matching_ngram_size}
    return options
