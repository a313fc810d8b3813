"""What a cell may read, and how it reaches the interpreter's files from a sandbox uid.

A cell needs the interpreter and its packages, its scratch directory and a few system files;
nothing else (the harness's answer keys and traces least of all). When the interpreter lives
under a directory the sandbox uid cannot enter (``/root`` is 0700: pyenv, conda in a home),
the holder opens each import directory while it is still root and imports through
``/proc/self/fd/N`` from then on: the kernel resolves that link without searching the parents.
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys

SYSTEM_DIRS = ("/usr", "/lib", "/lib64", "/lib32", "/sys/devices/system/cpu", "/proc")
SYSTEM_FILES = ("/etc/ld.so.cache", "/etc/localtime", "/etc/passwd", "/etc/group",
                "/etc/nsswitch.conf", "/dev/zero", "/dev/urandom", "/dev/random", "/dev/full")
PACKAGE_DIR_NAMES = ("site-packages", "dist-packages")


def interpreter_dirs() -> list[str]:
    """The import directories of this interpreter (standard library and installed packages),
    real paths, in ``sys.path`` order; a project on ``sys.path`` itself is not among them."""
    prefixes = {os.path.realpath(path) for path in (sys.prefix, sys.base_prefix,
                                                    sys.exec_prefix, sys.base_exec_prefix)}
    found: list[str] = []
    for entry in sys.path:
        if not entry:
            continue
        real = os.path.realpath(entry)
        inside = any(real == prefix or real.startswith(prefix + os.sep) for prefix in prefixes)
        if (inside or os.path.basename(real) in PACKAGE_DIR_NAMES) and os.path.isdir(real) \
                and real not in found:
            found.append(real)
    return found


def readable_dirs() -> list[str]:
    """Directories a cell may read below: the interpreter's, then the system's."""
    prefixes = {os.path.realpath(path) for path in (sys.prefix, sys.base_prefix)}
    dirs = interpreter_dirs() + sorted(prefixes)
    return [path for path in dict.fromkeys(dirs + list(SYSTEM_DIRS)) if os.path.isdir(path)]


def readable_files() -> list[str]:
    return [path for path in SYSTEM_FILES if os.path.exists(path)]


def others_can_reach(path: str) -> bool:
    """Whether a uid with no ownership and no group can list ``path`` (search every parent)."""
    current = path
    needed = stat.S_IROTH | stat.S_IXOTH
    while True:
        try:
            mode = os.stat(current).st_mode
        except OSError:
            return False
        if mode & needed != needed:
            return False
        parent = os.path.dirname(current)
        if parent == current:
            return True
        current = parent
        needed = stat.S_IXOTH


def hold_open(dirs: list[str]) -> dict[str, int]:
    """Open each directory the sandbox uid could not reach (call while still root)."""
    held = {}
    for path in dirs:
        if not others_can_reach(path):
            held[path] = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    return held


def import_through(held: dict[str, int]) -> None:
    """Point ``sys.path`` and every loaded module's paths at the held descriptors."""
    if not held:
        return
    spellings = {path: f"/proc/self/fd/{fd}" for path, fd in held.items()}
    for entry in sys.path:  # module paths are spelled as the sys.path entry they came from
        if entry and os.path.realpath(entry) in held:
            spellings[entry] = spellings[os.path.realpath(entry)]
    mapping = sorted(spellings.items(), key=lambda item: -len(item[0]))

    def moved(text: object) -> object:
        if not isinstance(text, str):
            return text
        for old, new in mapping:
            if text == old or text.startswith(old + os.sep):
                return new + text[len(old):]
        return text

    sys.path[:] = [moved(entry) for entry in sys.path]  # type: ignore[misc]
    sys.path_importer_cache.clear()
    for module in list(sys.modules.values()):
        search = getattr(module, "__path__", None)
        if isinstance(search, list):
            search[:] = [moved(entry) for entry in search]
        file = getattr(module, "__file__", None)
        if isinstance(file, str):
            with contextlib.suppress(AttributeError, TypeError):
                module.__file__ = moved(file)  # type: ignore[assignment]
    import importlib

    importlib.invalidate_caches()
