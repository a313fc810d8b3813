"""The machine a bundle is for: its Python and platform tags, the wheel tag check, lock files.

Kaggle's AIMO-3 image runs CPython 3.12 on x86_64 (Ubuntu 22.04, glibc 2.35), so it takes
``manylinux_2_17`` .. ``manylinux_2_35`` wheels (torch 2.7-2.9 ship only ``manylinux_2_28``,
NVIDIA's CUDA wheels use ``manylinux_2_27``, newer vLLM dependencies ``manylinux_2_34``). pip does not widen a ``manylinux_2_X`` tag to
older ones, so every tag is listed. A lock file pins every package of a profile; it is passed
to pip as a constraints file and written by resolving the profile for the target.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from aimo_infer.config import ConfigError
from aimo_infer.errors import ExternalError, MissingFile

AIMO3_PYTHON = "3.12"
# pip widens manylinux2014 to manylinux2010 and manylinux1 itself
AIMO3_PLATFORMS = (*(f"manylinux_2_{minor}_x86_64" for minor in range(35, 16, -1)),
                   "manylinux2014_x86_64")
TARGETS = {"aimo3": (AIMO3_PYTHON, AIMO3_PLATFORMS)}


@dataclass(frozen=True)
class Target:
    """A Python version (``3.12``) and the platform tags its machine accepts; both None for
    the builder itself."""

    python_version: str | None = None
    platforms: tuple[str, ...] = ()

    @property
    def is_builder(self) -> bool:
        return self.python_version is None

    def pip_args(self) -> tuple[str, ...]:
        """pip's flags for binary wheels of this target (none for the builder)."""
        if self.is_builder:
            return ()
        plats = tuple(arg for p in self.platforms for arg in ("--platform", p))
        return ("--only-binary=:all:", *plats, "--python-version", self.python_version or "",
                "--implementation", "cp")


def make_target(name: str | None, python_version: str | None,
                platforms: list[str] | None) -> Target:
    """From ``--target``, ``--python-version`` and repeated ``--platform``."""
    if name is not None:
        if name not in TARGETS:
            raise ConfigError(f"unknown --target {name!r}; known: {sorted(TARGETS)}")
        base_python, base_platforms = TARGETS[name]
        python_version = python_version or base_python
        platforms = platforms or list(base_platforms)
    if (python_version is None) != (not platforms):
        raise ConfigError("--platform and --python-version go together (or use --target)")
    if python_version is not None:
        parts = python_version.split(".")
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            raise ConfigError(f"--python-version must look like 3.12, got {python_version!r}")
    return Target(python_version, tuple(platforms or ()))


def builder_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def python_mismatch(target: Target) -> str | None:
    """A warning when the target's Python is not the builder's (None when they match)."""
    if target.is_builder or target.python_version == builder_python():
        return None
    return (f"the bundle targets Python {target.python_version} but is built with "
            f"{builder_python()}: only binary wheels for {target.python_version} are taken, and "
            f"the notebook must run Python {target.python_version}")


def supported_tags(target: Target) -> set[str]:
    """Every wheel tag (``py-abi-platform``) an interpreter of the target can install."""
    from packaging import tags

    if target.is_builder:
        return {str(t) for t in tags.sys_tags()}
    major, minor = (int(p) for p in (target.python_version or "").split("."))
    platforms = list(target.platforms)
    for p in target.platforms:  # pip's widening of the legacy manylinux names
        if p.startswith("manylinux2014_"):
            arch = p.split("_", 1)[1]
            platforms += [f"manylinux2010_{arch}", f"manylinux1_{arch}"]
    found = set(tags.cpython_tags((major, minor), platforms=platforms))
    found |= set(tags.compatible_tags((major, minor), f"cp{major}{minor}", platforms))
    return {str(t) for t in found}


def wheel_misfits(wheels: list[Path], target: Target) -> list[str]:
    """The wheels (and sdists) the target cannot install, each with its tags."""
    from packaging.utils import InvalidWheelFilename, parse_wheel_filename

    allowed = supported_tags(target)
    bad = []
    for path in wheels:
        if not path.name.endswith(".whl"):
            if not target.is_builder:
                bad.append(f"{path.name} (a source archive: the target cannot build it)")
            continue
        try:
            _, _, _, wheel_tags = parse_wheel_filename(path.name)
        except InvalidWheelFilename:
            bad.append(f"{path.name} (not a wheel file name)")
            continue
        if not {str(t) for t in wheel_tags} & allowed:
            shown = sorted(str(t) for t in wheel_tags)[:3]
            bad.append(f"{path.name} (tags {shown})")
    return bad


def check_wheels(wheel_dir: Path, target: Target) -> None:
    """Raise when a file in ``wheel_dir`` does not fit the target."""
    files = sorted(p for p in wheel_dir.iterdir() if p.is_file())
    bad = wheel_misfits(files, target)
    if bad:
        who = "this machine" if target.is_builder else \
            f"Python {target.python_version} on {', '.join(target.platforms[:3])}..."
        raise ConfigError(f"{len(bad)} file(s) in {wheel_dir} do not fit {who}: "
                          + "; ".join(bad[:5]))


def read_lock(path: Path) -> dict[str, str]:
    """``name==version`` lines of a lock file (comments and blanks ignored)."""
    if not path.is_file():
        raise MissingFile(f"lock file not found: {path}")
    pins: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep or not name.strip() or not version.strip() or " " in version.strip():
            raise ConfigError(f"{path}:{number}: expected name==version, got {raw!r}")
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def resolve_lock(requirement: str, target: Target, out: Path, python: str = sys.executable,
                 extra_index_urls: tuple[str, ...] = ()) -> dict[str, str]:
    """Resolve ``requirement`` for the target (pip's dry run, metadata only) and write every
    package it installs, pinned, to ``out``."""
    index = tuple(arg for url in extra_index_urls for arg in ("--extra-index-url", url))
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp, "report.json")
        argv = [python, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                "--report", str(report), "--target", str(Path(tmp, "t")), *target.pip_args(),
                *index, requirement]
        done = subprocess.run(argv, capture_output=True, text=True)
        if done.returncode != 0:
            tail = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")][-2:]
            raise ExternalError(f"resolving {requirement} failed: {' | '.join(tail) or done.stderr[-300:]}")
        installs = json.loads(report.read_text())["install"]
    pins = {i["metadata"]["name"].lower().replace("_", "-"): i["metadata"]["version"]
            for i in installs}
    where = "this machine" if target.is_builder else \
        f"CPython {target.python_version}, {', '.join(target.platforms)}"
    header = [f"# Lock for {requirement}: every package pip installs for {where}.",
              f"# Written by aimo-infer bundle --write-lock (pip {_pip_version(python)}, "
              f"built on {platform.system()} {platform.machine()}); used as pip constraints."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(header + [f"{n}=={v}" for n, v in sorted(pins.items())]) + "\n")
    return pins


def _pip_version(python: str) -> str:
    done = subprocess.run([python, "-m", "pip", "--version"], capture_output=True, text=True)
    return done.stdout.split()[1] if done.returncode == 0 and done.stdout else "?"
