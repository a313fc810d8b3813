"""Engine build recipes: the published AIMO-2 commands, and refusals before anything runs."""

from __future__ import annotations

import importlib.util
import json
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from aimo_infer.manifest import EngineManifest, load_manifest, write_manifest
from engines import build
from engines.flags import load_flag_set
from engines.plan import check_plan, make_plan
from engines.recipe import load_recipe, trained_draft_len, validate

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "engines" / "recipes"
AIMO2 = RECIPES / "aimo2-redrafter-fp8.toml"
DRAFTER_NAME = "redrafter_merged_n_3_lr_0.001_layers_2"


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A fake merged checkpoint, a ReDrafter checkpoint and drafter data, as files on disk."""
    model = tmp_path / "merged"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"],
                                                   "torch_dtype": "bfloat16"}))
    (model / "model.safetensors").write_bytes(b"")
    write_manifest(model, EngineManifest(model=str(model), backend="hf",
                                         merge={"/m/cot": 0.3, "/m/tir": 0.7}))
    drafter = tmp_path / DRAFTER_NAME
    drafter.mkdir()
    (drafter / "config.json").write_text(json.dumps(
        {"hidden_size": 64, "exit_dim": 128, "num_draft_layers": 2, "rnn": True}))
    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"problem": "1+1?", "generated_solution": "2"}) + "\n")
    return {"model": model, "drafter": drafter, "data": data, "work": tmp_path / "work"}


def overrides(inputs: dict[str, Path], *extra: str) -> list[str]:
    return [f"model.path={json.dumps(str(inputs['model']))}",
            f"model.work_dir={json.dumps(str(inputs['work']))}",
            f"drafter.path={json.dumps(str(inputs['drafter']))}",
            f"quantize.calib_from=[{json.dumps(str(inputs['data']))}]",
            'tools.trtllm_examples="/opt/trtllm/examples"', *extra]


def cli(recipe: Path, sets: Sequence[str], *flags: str) -> list[str]:
    return [str(recipe), *flags, *(a for s in sets for a in ("--set", s))]


class NoRunner:
    """Records every command a build tries to start."""

    def __init__(self, code: int = 0) -> None:
        self.started: list[list[str]] = []
        self.code = code

    def __call__(self, argv: Sequence[str]) -> int:
        self.started.append(list(argv))
        return self.code


def test_published_recipe_plan_carries_every_published_flag(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    runner = NoRunner()
    assert build.main(cli(AIMO2, overrides(inputs), "--plan"), runner=runner) == 0
    assert runner.started == []
    out = capsys.readouterr().out
    by_tool = dict(_tool(argv) for argv in _printed_commands(out))
    quantize = by_tool["quantize.py"]
    assert _flag(quantize, "--qformat") == "fp8" and _flag(quantize, "--calib_size") == "4096"
    assert _flag(quantize, "--model_dir") == str(inputs["model"])
    redrafter = by_tool["convert_checkpoint.py"]
    assert _flag(redrafter, "--redrafter_num_beams") == "1"
    assert _flag(redrafter, "--redrafter_draft_len_per_beam") == "3"
    assert _flag(redrafter, "--drafter_model_dir") == str(inputs["drafter"])
    assert "--redrafter_no_greedy_search" not in redrafter
    # the drafter is attached to the quantized checkpoint, and the engine built from the result
    assert _flag(redrafter, "--base_model_checkpoint_dir") == _flag(quantize, "--output_dir")
    trt = by_tool["trtllm-build"]
    assert _flag(trt, "--checkpoint_dir") == _flag(redrafter, "--output_dir")
    for flag, value in [("--gemm_plugin", "fp8"), ("--max_batch_size", "32"),
                        ("--max_seq_len", "32000"), ("--kv_cache_type", "paged"),
                        ("--speculative_decoding_mode", "explicit_draft_tokens")]:
        assert _flag(trt, flag) == value, flag
    assert "--use_paged_context_fmha=enable" in trt
    # the calibration step runs first and feeds quantize.py
    calib = by_tool["engines.calibration"]
    assert _flag(calib, "--out") == _flag(quantize, "--calib_dataset")
    assert str(inputs["data"]) in calib
    assert out.index("engines.calibration") < out.index("quantize.py") < out.index(
        "convert_checkpoint.py") < out.index("trtllm-build")
    assert "same stream" in out  # the greedy-drafter warning


def _printed_commands(out: str) -> list[list[str]]:
    """The shell commands of a printed plan (comments and the manifest JSON left out)."""
    commands = []
    for block in out.split("\n\n"):
        text = "\n".join(line for line in block.splitlines() if not line.startswith("#"))
        if text.strip() and not text.lstrip().startswith("{"):
            commands.append(shlex.split(text.replace("\\\n", " ")))
    return commands


def _tool(argv: list[str]) -> tuple[str, list[str]]:
    if argv[0] == sys.executable:
        return (argv[2] if argv[1] == "-m" else Path(argv[1]).name), argv
    return argv[0], argv


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_non_greedy_drafter_adds_the_flag(inputs: dict[str, Path]) -> None:
    recipe = load_recipe(AIMO2, overrides(inputs, "drafter.greedy=false"))
    plan = make_plan(recipe)
    redrafter = next(s for s in plan.steps if s.name == "redrafter")
    assert "--redrafter_no_greedy_search" in redrafter.argv
    assert plan.manifest.drafter["greedy"] is False
    assert not any("same stream" in n for n in plan.notes)


def test_manifest_records_the_build(inputs: dict[str, Path]) -> None:
    plan = make_plan(load_recipe(AIMO2, overrides(inputs)))
    m = plan.manifest
    assert m.backend == "trt-engine" and m.quantization == "fp8"
    assert m.merge == {"/m/cot": 0.3, "/m/tir": 0.7}  # carried over from the merged checkpoint
    assert m.drafter == {"kind": "redrafter", "num_beams": 1, "draft_len": 3, "greedy": True,
                         "trained_draft_len": 3, "path": str(inputs["drafter"])}
    assert m.build_flags["speculative_decoding_mode"] == "explicit_draft_tokens"
    assert m.tokenizer_path == str(inputs["model"]) and m.max_seq_len == 32000
    assert m.greedy_drafter


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["drafter.draft_len=5"], "draft_len: 5 is larger than the 3 tokens the drafter was trained"),
        (["engine.max_seq_len=8000", "engine.max_input_len=4096"],
         "max_seq_len: 8000 is below prompt + output + draft tokens (2048 + 29000 + 3 = 31051)"),
        (["limits.max_output_tokens=29950"], "below prompt + output + draft tokens"),
        (["quantize.qformat=\"fp4\""], "unknown quantization 'fp4'"),
        (["engine.max_batch_size=8"], "max_batch_size: 8 is below the 12 streams"),
        (["quantize.qformat=\"int8_wo\""], "gemm_plugin: fp8 needs quantize.qformat fp8"),
    ],
)
def test_impossible_settings_fail_before_any_command(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    runner = NoRunner()
    for flags in (("--plan",), ()):
        assert build.main(cli(AIMO2, overrides(inputs, *extra), *flags), runner=runner) == 2
        err = capsys.readouterr().err
        assert message in err
        assert all(line.startswith("build: error: ") for line in err.strip().splitlines())
    assert runner.started == []
    assert not inputs["work"].exists()


def test_missing_checkpoint_fails_with_one_line(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    runner = NoRunner()
    sets = overrides(inputs, f"model.path={json.dumps(str(inputs['model']) + '-missing')}")
    assert build.main(cli(AIMO2, sets), runner=runner) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "checkpoint directory" in err and "does not exist" in err
    assert runner.started == []


def test_missing_drafter_and_calibration_are_reported_together(inputs: dict[str, Path]) -> None:
    recipe = load_recipe(AIMO2, overrides(inputs, 'drafter.path="/nope/d"',
                                          'quantize.calib_from=["/nope/x.jsonl"]'))
    errors = validate(recipe)
    assert any("drafter directory /nope/d does not exist" in e for e in errors)
    assert any("/nope/x.jsonl does not exist" in e for e in errors)


def test_published_recipe_as_shipped_names_its_inputs(tmp_path: Path) -> None:
    # run from an empty directory: every relative input is missing and each is named
    proc = subprocess.run([sys.executable, "-m", "engines.build", str(AIMO2), "--plan"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 3 and all(line.startswith("build: error: ") for line in lines)
    assert "Traceback" not in proc.stderr


def test_unknown_recipe_key_is_named(inputs: dict[str, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[engine]\nmax_batch = 4\n')
    assert build.main([str(bad), "--plan"]) == 2
    assert "engine: unknown key(s) ['max_batch']" in capsys.readouterr().err


def test_redrafter_is_refused_off_the_engine_path(inputs: dict[str, Path]) -> None:
    recipe = load_recipe(RECIPES / "vllm-fp8.toml",
                         overrides(inputs, 'drafter.kind="redrafter"'))
    assert any("ReDrafter needs the trt-engine backend" in e for e in validate(recipe))


def test_trained_draft_len_comes_from_the_directory_name(inputs: dict[str, Path]) -> None:
    recipe = load_recipe(AIMO2, overrides(inputs))
    assert trained_draft_len(recipe) == 3
    recipe.drafter.trained_draft_len = 5
    assert trained_draft_len(recipe) == 5


def test_running_without_tensorrt_llm_fails_clearly(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(build, "trtllm_version", lambda: None)
    runner = NoRunner()
    assert build.main(cli(AIMO2, overrides(inputs)), runner=runner) == 3
    err = capsys.readouterr().err
    assert "TensorRT-LLM is not installed" in err and "1.2.x" in err
    assert runner.started == []


def test_tensorrt_llm_without_redrafter_is_refused(inputs: dict[str, Path]) -> None:
    plan = make_plan(load_recipe(AIMO2, overrides(inputs)))
    errors = build.check_toolchain(plan, "1.3.0")
    assert any("has no ReDrafter" in e for e in errors)
    assert any("quantize.py not found" in e for e in errors)  # /opt/trtllm/examples is absent


def test_run_stops_at_the_first_failure_and_writes_no_manifest(inputs: dict[str, Path]) -> None:
    plan = make_plan(load_recipe(AIMO2, overrides(inputs)))
    runner = NoRunner(code=7)
    with pytest.raises(build.BuildError, match=r"step 1 \(calibration\) failed with exit code 7"):
        build.run_plan(plan, runner, version="1.2.0", log=lambda _: None)
    assert len(runner.started) == 1
    assert not plan.manifest_path.exists()


def test_successful_run_writes_the_manifest(inputs: dict[str, Path]) -> None:
    plan = make_plan(load_recipe(AIMO2, overrides(inputs)))

    def fake(argv: Sequence[str]) -> int:  # each step "produces" its output directory
        step = next(s for s in plan.steps if list(s.argv) == list(argv))
        step.output.mkdir(parents=True, exist_ok=True)
        return 0

    path = build.run_plan(plan, fake, version="1.2.0", log=lambda _: None)
    manifest = load_manifest(path.parent)
    assert manifest is not None and manifest.versions["tensorrt_llm"] == "1.2.0"
    assert manifest.drafter["kind"] == "redrafter" and manifest.merge["/m/tir"] == 0.7


@pytest.mark.parametrize("name", ["trtllm-pytorch-fp8-eagle3", "trtllm-pytorch-fp8-ngram",
                                  "vllm-fp8"])
def test_alternative_recipes_plan(inputs: dict[str, Path], name: str) -> None:
    eagle = inputs["drafter"]  # any directory with a config.json stands in for a drafter
    recipe = load_recipe(RECIPES / f"{name}.toml", overrides(inputs))
    if recipe.drafter.kind == "eagle3":
        recipe.drafter.path = str(eagle)
    assert validate(recipe) == []
    plan = make_plan(recipe)
    names = [s.name for s in plan.steps]
    if recipe.backend == "vllm":
        assert names == []
        assert plan.manifest.build_flags["quantization"] == "fp8"
    else:
        assert names == ["calibration", "quantize"]
        quantize = plan.steps[1].argv
        assert "--export_format" in quantize and quantize[quantize.index("--export_format") + 1] == "hf"
    spec = plan.manifest.build_flags["speculative_config"]
    if recipe.backend == "vllm":  # vLLM's SpeculativeConfig names
        assert spec["method"] == recipe.drafter.kind and spec["num_speculative_tokens"] >= 3
        assert spec["prompt_lookup_max"] == recipe.drafter.max_matching_ngram_size
    else:  # the TensorRT-LLM adapter's table: decoding_type names the config class
        assert spec["decoding_type"] == {"eagle3": "Eagle", "ngram": "NGram"}[recipe.drafter.kind]
        assert spec["max_draft_len"] == recipe.drafter.draft_len
    assert "enable_prefix_caching" not in plan.manifest.build_flags or recipe.backend == "vllm"
    assert check_plan(plan) == []
    assert not plan.manifest.greedy_drafter


def test_calibration_step_writes_the_layout_quantize_reads(inputs: dict[str, Path],
                                                           tmp_path: Path) -> None:
    from engines.calibration import main as calibration_main

    problems = tmp_path / "problems.jsonl"
    problems.write_text(json.dumps({"id": "p1", "problem": "What is 2+3?"}) + "\n")
    out = tmp_path / "calib"
    assert calibration_main([str(inputs["data"]), str(problems), "--out", str(out),
                             "--size", "5", "--prompt", "cot"]) == 0
    rows = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(set(r) == {"text"} for r in rows)
    assert rows[0]["text"].endswith("2")  # the solution follows its prompt
    assert "What is 2+3?" in rows[1]["text"]
    if importlib.util.find_spec("datasets") is not None:
        import datasets

        # how quantize.py reads a local calibration directory
        texts = datasets.load_dataset(str(out), split="train")["text"][:5]
        assert list(texts) == [r["text"] for r in rows]


# --- planned commands against the recorded flags of the real scripts (engines/trtllm_flags) ---


def test_recorded_flag_sets_keep_the_differences_between_versions() -> None:
    """quantize.py at c8c6df08 has no --export_format and adds fp8_pc_pt; at 059c97c1 it has
    --export_format {tensorrt_llm,hf} (read from examples/quantization/quantize.py)."""
    old, new = load_flag_set("trtllm-c8c6df08"), load_flag_set("trtllm-059c97c1")
    assert not old["quantize"].has("--export_format")
    assert "fp8_pc_pt" in old["quantize"].flags["--qformat"]
    assert new["quantize"].flags["--export_format"] == ["tensorrt_llm", "hf"]
    assert "fp8_pc_pt" not in new["quantize"].flags["--qformat"]
    assert old["redrafter"].flags["--redrafter_no_greedy_search"] == "switch"
    for scripts in (old, new):
        for script in scripts.values():
            assert len(script.commit) == 40 and script.path


@pytest.mark.parametrize("extra", [[], ["drafter.greedy=false"], ["quantize.kv_cache_dtype=\"fp8\""]])
def test_every_planned_command_parses_with_the_recorded_flags(
    inputs: dict[str, Path], extra: list[str]
) -> None:
    plan = make_plan(load_recipe(AIMO2, overrides(inputs, *extra)))
    assert [s.name for s in plan.steps] == ["calibration", "quantize", "redrafter", "trtllm-build"]
    assert check_plan(plan) == []


@pytest.mark.parametrize(("extra_args", "message"), [
    (["--no_such_flag", "1"], "has no --no_such_flag flag"),
    (["--profiling_verbosity", "all"], "'all' is not one of layer_names_only, detailed, none"),
    (["--weight_streaming=yes"], "--weight_streaming takes no value"),
])
def test_a_command_the_script_would_refuse_stops_the_build_before_it_starts(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture[str], extra_args: list[str],
    message: str
) -> None:
    runner = NoRunner()
    sets = overrides(inputs, f"engine.extra_args={json.dumps(extra_args)}")
    assert build.main(cli(AIMO2, sets), runner=runner) == 2
    assert runner.started == []
    err = capsys.readouterr().err
    assert message in err and "tensorrt_llm/commands/build.py at 65f1d153" in err


def test_pytorch_recipe_refuses_a_quantize_py_without_hugging_face_export(
    inputs: dict[str, Path]
) -> None:
    recipe = load_recipe(RECIPES / "trtllm-pytorch-fp8-ngram.toml",
                         overrides(inputs, 'tools.trtllm_flags="trtllm-c8c6df08"'))
    errors = validate(recipe)
    assert len(errors) == 1 and "has no --export_format" in errors[0]


def test_recipe_must_name_its_version_and_a_recorded_flag_set(inputs: dict[str, Path]) -> None:
    recipe = load_recipe(AIMO2, overrides(inputs, 'tools.trtllm_flags="trtllm-0000000"',
                                          'tools.trtllm_version=""'))
    assert validate(recipe) == [
        "tools.trtllm_version: not set (the TensorRT-LLM release this recipe targets)"]
    recipe.tools.trtllm_version = "1.2.x"
    assert validate(recipe) == ["tools.trtllm_flags: unknown TensorRT-LLM flag set "
                                "'trtllm-0000000'; recorded: trtllm-059c97c1, trtllm-c8c6df08"]


def test_redrafter_base_architecture_is_checked_before_the_quantize_step(
    inputs: dict[str, Path]
) -> None:
    (inputs["model"] / "config.json").write_text(json.dumps(
        {"architectures": ["Qwen3ForCausalLM"], "torch_dtype": "bfloat16"}))
    errors = validate(load_recipe(AIMO2, overrides(inputs)))
    assert errors == ["model.path: ReDrafter (examples/redrafter/convert_checkpoint.py) supports "
                      "base architectures QWenForCausalLM, Qwen2ForCausalLM, LlamaForCausalLM, "
                      "not ['Qwen3ForCausalLM']"]


@pytest.mark.parametrize("name", ["vllm-fp8", "trtllm-pytorch-fp8-ngram"])
def test_recorded_load_options_reach_the_engine_under_its_own_names(
    inputs: dict[str, Path], name: str
) -> None:
    """engine.json is read back: each field lands on the engine argument of the same meaning."""
    from standins import standin_packages

    from aimo_infer.backends import create_engine
    from aimo_infer.config import EngineConfig

    plan = make_plan(load_recipe(RECIPES / f"{name}.toml", overrides(inputs)))
    model = inputs["model"]
    plan.manifest.backend = plan.recipe.backend
    write_manifest(model, plan.manifest)  # as if the build wrote it next to the weights
    with standin_packages():
        engine_name = "vllm" if plan.recipe.backend == "vllm" else "trtllm"
        engine = create_engine(EngineConfig(engine_name, str(model), {}))
        try:
            if engine_name == "vllm":
                args = engine._engine.engine_args
                assert (args.max_model_len, args.max_num_seqs) == (32000, 32)
                assert args.quantization == "fp8" and args.enable_prefix_caching is True
                assert args.speculative_config["prompt_lookup_max"] == 3
            else:
                args = engine._llm.args
                assert (args.max_seq_len, args.max_batch_size) == (32000, 32)
                spec = args.speculative_config
                assert (spec.max_draft_len, spec.max_matching_ngram_size) == (4, 3)
            assert engine.info.context_length == 32000
        finally:
            import asyncio

            asyncio.run(engine.shutdown())
