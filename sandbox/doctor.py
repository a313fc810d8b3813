"""``python -m sandbox doctor``: which protections are in force, do the walls hold, do imports work.

Every probe runs as a cell in a real session. The import check imports each standard-library
module and finds each installed package inside a cell, and compares with what this interpreter
imports outside the sandbox: a module that works outside but not inside is a failure (a cell
would hit ModuleNotFoundError). Problems are listed, and make the command exit non-zero.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys

from sandbox import reach
from sandbox.config import SandboxConfig
from sandbox.pool import SandboxPool

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules whose import has effects beyond importing (a browser, a GUI, printed text) or that
# only exist on other platforms; the comparison with the outside drops the rest.
SKIP = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo", "__main__"}
PROBES = {
    "run a program": "import os\nos.system('true') == 0 and print('ESCAPED')",
    "open an internet socket": "import socket\nsocket.socket().close(); print('ESCAPED')",
    "write outside scratch": "open('/tmp/sandbox-doctor-probe', 'w').write('x'); print('ESCAPED')",
    "signal the manager": "import os\nos.kill(os.getppid(), 0); print('ESCAPED')",
    "read the harness's files": f"open({os.path.join(PACKAGE_ROOT, 'sandbox', 'config.py')!r})"
                                ".read(); print('ESCAPED')",
    "SysV shared memory": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "shm = libc.shmget(0, 4096, 0o1600)\nif shm >= 0:\n"
                          "    libc.shmctl(shm, 0, None)\n    print('ESCAPED')",
    "memfd": "import os\nos.memfd_create('x'); print('ESCAPED')",
}
IMPORT_CHECK = """
import importlib, importlib.util, json, warnings
names, packages = json.loads({payload!r})
imported, found = [], []
with warnings.catch_warnings():
    warnings.simplefilter('ignore')
    for name in names:
        try:
            importlib.import_module(name)
            imported.append(name)
        except BaseException:
            pass
    for name in packages:
        try:
            if importlib.util.find_spec(name) is not None:
                found.append(name)
        except BaseException:
            pass
print('\\nIMPORTS ' + json.dumps([imported, found]))
"""


def stdlib_names() -> list[str]:
    return sorted(name for name in sys.stdlib_module_names
                  if name not in SKIP and not name.startswith("_"))


def package_names() -> list[str]:
    """Top-level names of installed distributions that live in the interpreter's directories
    (a project installed in place from elsewhere is not for cells, and not readable there)."""
    dirs = reach.interpreter_dirs()
    names = []
    for name in sorted(importlib.metadata.packages_distributions()):
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        where = spec.origin if spec.origin not in (None, "namespace") else \
            next(iter(spec.submodule_search_locations or []), None)
        real = os.path.realpath(where) if where else ""
        if any(real.startswith(path + os.sep) for path in dirs):
            names.append(name)
    return names


def parse_imports(stdout: str) -> tuple[list[str], list[str]] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("IMPORTS "):
            imported, found = json.loads(line[len("IMPORTS "):])
            return imported, found
    return None


def outside(names: list[str], packages: list[str]) -> tuple[list[str], list[str]]:
    """What this interpreter imports without the sandbox (a fresh process, same flags)."""
    code = IMPORT_CHECK.format(payload=json.dumps([names, packages]))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd="/", env={"PATH": os.environ.get("PATH", "")})
    parsed = parse_imports(done.stdout)
    if parsed is None:
        raise RuntimeError("the outside import check failed: " + done.stderr[-300:])
    return parsed


def protection_problems(protections: dict[str, str]) -> list[str]:
    problems = []
    for name in ("rlimits", "landlock", "seccomp", "imports"):
        state = protections.get(name, "missing")
        if not state.startswith("on"):
            problems.append(f"{name} is {state}")
    if os.geteuid() == 0 and not protections.get("uid", "").startswith("on"):
        problems.append(f"uid separation is {protections.get('uid', 'missing')}")
    return problems


async def run_doctor(config: SandboxConfig | None = None) -> tuple[dict[str, object], int]:
    """The report and the exit status (0: every protection and import is in place)."""
    config = config or SandboxConfig(max_output_bytes=64_000)
    names, packages = stdlib_names(), package_names()
    want_names, want_packages = outside(names, packages)
    async with SandboxPool(config) as pool:
        session = await pool.open_session()
        probes = {}
        for name, code in PROBES.items():
            result = await session.run(code)
            probes[name] = "allowed" if "ESCAPED" in result.stdout else "blocked"
        checked = await session.run(IMPORT_CHECK.format(
            payload=json.dumps([want_names, want_packages])), timeout=120)
        await session.close()
    parsed = parse_imports(checked.stdout)
    problems = protection_problems(session.protections)
    problems += [f"a cell can {name}" for name, state in probes.items() if state == "allowed"]
    if parsed is None:
        problems.append(f"the import check did not finish ({checked.status}): "
                        f"{checked.stderr[-300:]}")
        missing_modules, missing_packages = want_names, want_packages
    else:
        missing_modules = sorted(set(want_names) - set(parsed[0]))
        missing_packages = sorted(set(want_packages) - set(parsed[1]))
    if missing_modules:
        problems.append(f"{len(missing_modules)} standard-library modules do not import in a "
                        f"cell: {', '.join(missing_modules[:20])}")
    if missing_packages:
        problems.append(f"{len(missing_packages)} installed packages are not found in a cell: "
                        f"{', '.join(missing_packages[:20])}")
    report: dict[str, object] = {
        "protections": session.protections, "probes": probes,
        "imports": {"standard library": f"{len(want_names) - len(missing_modules)}"
                                        f"/{len(want_names)} import in a cell",
                    "installed packages": f"{len(want_packages) - len(missing_packages)}"
                                          f"/{len(want_packages)} found in a cell"},
        "manager": "one per pool; holders fork from it, never from the caller",
        "problems": problems,
    }
    return report, 1 if problems else 0
