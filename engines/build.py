"""Build an inference engine from a recipe: check everything, then run the steps in order.

    python -m engines.build engines/recipes/aimo2-redrafter-fp8.toml --plan
    python -m engines.build RECIPE --set model.path=/models/merged --set drafter.path=/drafters/x

``--plan`` prints every command with resolved paths and the ``engine.json`` it would write, and
runs nothing. Without it the commands run one after another with their output streamed, the
build stops at the first failure, and ``engine.json`` is written only when every step succeeded.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from importlib import metadata
from pathlib import Path

import aimo_infer
from aimo_infer.manifest import write_manifest
from engines.plan import BuildPlan, Step, check_plan, make_plan
from engines.recipe import RecipeError, load_recipe, validate

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REDRAFTER_LAST = (1, 2)  # ReDrafter and the TensorRT engine path were removed after 1.2.x
TRT_STEPS = frozenset({"quantize", "redrafter", "trtllm-build"})

Runner = Callable[[Sequence[str]], int]


class BuildError(RuntimeError):
    """The build cannot start or a step failed; the message is one line."""


def trtllm_version() -> str | None:
    """Installed TensorRT-LLM version, read from package metadata (importing it needs a GPU)."""
    for name in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


def check_toolchain(plan: BuildPlan, version: str | None) -> list[str]:
    """Why the installed tools cannot run this plan, one line each (empty when they can)."""
    if not any(step.name in TRT_STEPS for step in plan.steps):
        return []
    redrafter = plan.recipe.drafter.kind == "redrafter"
    wanted = "1.2.x" if redrafter or plan.recipe.backend == "trt-engine" else ">= 1.0"
    if version is None:
        return [f"TensorRT-LLM is not installed: this build needs tensorrt-llm {wanted} "
                f"(Linux, NVIDIA GPU); use --plan to check the recipe without it"]
    errors = []
    if redrafter and _major_minor(version) > REDRAFTER_LAST:
        errors.append(f"TensorRT-LLM {version} has no ReDrafter (removed after 1.2.x): install "
                      "tensorrt-llm 1.2.x or use a trtllm-pytorch recipe")
    for step in plan.steps:
        script = next((a for a in step.argv[1:2] if a.endswith(".py")), None)
        if script and not Path(script).is_file():
            errors.append(f"step {step.name}: {script} not found (tools.trtllm_examples / "
                          "TRTLLM_EXAMPLES must point at the TensorRT-LLM examples/ directory)")
        if step.argv[0] == "trtllm-build" and shutil.which("trtllm-build") is None:
            errors.append("trtllm-build is not on PATH (it comes with the tensorrt-llm package)")
    return errors


def run_command(argv: Sequence[str]) -> int:
    """Run one command with its output streamed to ours; Ctrl-C stops it too."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(list(argv), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGINT)
        proc.wait()
        raise


def run_plan(plan: BuildPlan, runner: Runner = run_command, version: str | None = None,
             log: Callable[[str], None] = print) -> Path:
    """Run every step in order, stop at the first failure, then write ``engine.json``."""
    for i, step in enumerate(plan.steps, 1):
        log(f"\n# step {i}/{len(plan.steps)}: {step.name}\n{step.shell()}")
        code = runner(step.argv)
        if code != 0:
            raise BuildError(f"step {i} ({step.name}) failed with exit code {code}; "
                             f"later steps were not run")
        _check_output(step)
    manifest = plan.manifest
    manifest.versions = {"aimo_infer": aimo_infer.__version__}
    if version is not None:
        manifest.versions["tensorrt_llm"] = version
    plan.engine_dir.mkdir(parents=True, exist_ok=True)
    return write_manifest(plan.engine_dir, manifest)


def _check_output(step: Step) -> None:
    if not step.output.exists():
        raise BuildError(f"step {step.name} exited 0 but did not produce {step.output}")


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)(?:\.(\d+))?", version)
    return (int(m.group(1)), int(m.group(2) or 0)) if m else (0, 0)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m engines.build", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("recipe", help="recipe TOML (see engines/recipes/)")
    parser.add_argument("--plan", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set engine.max_batch_size=16")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None, runner: Runner = run_command) -> int:
    args = parse_args(argv)
    try:
        recipe = load_recipe(args.recipe, args.overrides)
    except RecipeError as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 2
    errors = validate(recipe)
    for error in errors:
        print(f"build: error: {error}", file=sys.stderr)
    if errors:
        return 2
    plan = make_plan(recipe)
    flag_errors = check_plan(plan)  # every command against its script's recorded flags
    for error in flag_errors:
        print(f"build: error: {error}", file=sys.stderr)
    if flag_errors:
        return 2
    if args.plan:
        print(plan.render())
        return 0
    version = trtllm_version()
    problems = check_toolchain(plan, version)
    for problem in problems:
        print(f"build: error: {problem}", file=sys.stderr)
    if problems:
        return 3
    for note in plan.notes:
        print(f"# note: {note}")
    try:
        path = run_plan(plan, runner, version)
    except BuildError as exc:
        print(f"build: error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
