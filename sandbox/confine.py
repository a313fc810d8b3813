"""Turning a fresh fork of the manager into a confined holder, and probing what the kernel allows.

Order matters: rlimits and the uid drop need root, Landlock and seccomp come last so the
process can still open what it needs while setting up.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from dataclasses import dataclass

from sandbox import landlock, reach, seccomp
from sandbox.config import SandboxConfig

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


@dataclass(frozen=True)
class Plan:
    """Everything one session's holder needs to confine itself."""

    scratch: str
    uid: int | None  # None: keep the manager's uid (not root, or uid separation off)
    config: SandboxConfig
    keep_fds: tuple[int, ...]


def _vm_size_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[0]) * resource.getpagesize()


def _count_tasks_of(uid: int) -> int:
    count = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.stat(entry.path).st_uid == uid:
                    count += len(os.listdir(os.path.join(entry.path, "task")))
    return count


def _close_other_fds(keep: tuple[int, ...]) -> None:
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd not in keep:
            with contextlib.suppress(OSError):
                os.close(fd)


def _redirect_std_fds() -> None:
    null_in = os.open(os.devnull, os.O_RDONLY)
    null_out = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null_in, 0)
    os.dup2(null_out, 1)
    os.dup2(null_out, 2)
    for fd in (null_in, null_out):
        if fd > 2:
            os.close(fd)


def _set_limits(plan: Plan) -> dict[str, str]:
    cfg = plan.config
    limits = {
        resource.RLIMIT_AS: _vm_size_bytes() + cfg.memory_mb * 1024 * 1024,
        resource.RLIMIT_NOFILE: cfg.max_open_files,
        resource.RLIMIT_FSIZE: cfg.max_file_mb * 1024 * 1024,
        resource.RLIMIT_CORE: 0,
    }
    if os.geteuid() == 0:  # lets a woken snapshot undo its own low priority
        limits[resource.RLIMIT_NICE] = 20
    if plan.uid is not None:
        limits[resource.RLIMIT_NPROC] = cfg.max_processes
    else:  # the count is shared with every process of this user
        limits[resource.RLIMIT_NPROC] = _count_tasks_of(os.getuid()) + cfg.max_processes
    for which, value in limits.items():
        _soft, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        resource.setrlimit(which, (value, value))
    nproc = "per session uid" if plan.uid is not None else "shared with this user"
    return {"rlimits": f"on (address space, files, file size, core=0; process count {nproc})"}


def _drop_privileges(uid: int) -> None:
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)


def apply(plan: Plan) -> dict[str, str]:
    """Confine the calling process (a fresh, single-threaded fork); returns what is in force."""
    report: dict[str, str] = {}
    os.setpgid(0, 0)
    os.chdir(plan.scratch)
    os.environ.clear()
    os.environ.update({"HOME": plan.scratch, "TMPDIR": plan.scratch, "PATH": SAFE_PATH,
                       "LANG": "C.UTF-8", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1",
                       "MKL_NUM_THREADS": "1"})
    _redirect_std_fds()
    held = reach.hold_open(reach.interpreter_dirs()) if plan.uid is not None else {}
    _close_other_fds(plan.keep_fds + tuple(held.values()))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # oversized writes fail with EFBIG instead
    report.update(_set_limits(plan))
    ruleset, landlock_off = _prepare_landlock(plan)  # opens its paths while still root
    if plan.uid is not None:
        _drop_privileges(plan.uid)
        report["uid"] = f"on (uid {plan.uid})"
    else:
        report["uid"] = "off (not root or disabled): sessions share the caller's uid"
    reach.import_through(held)
    report["imports"] = (f"on ({len(held)} interpreter directories the sandbox uid cannot "
                         "enter are reached through held descriptors)" if held else
                         "on (interpreter directories are readable by the sandbox uid)")
    report["landlock"] = _enforce_landlock(ruleset) if ruleset is not None else landlock_off
    report["seccomp"] = _apply_seccomp(plan)
    return report


def _prepare_landlock(plan: Plan) -> tuple[landlock.Ruleset | None, str]:
    if not plan.config.landlock:
        return None, "off (disabled in config)"
    try:
        return landlock.prepare([plan.scratch], [os.devnull], reach.readable_dirs(),
                                reach.readable_files()), ""
    except OSError as exc:
        return None, f"off ({exc.strerror or exc})"


def _enforce_landlock(ruleset: landlock.Ruleset) -> str:
    try:
        abi = landlock.enforce(ruleset)
    except OSError as exc:
        return f"off ({exc.strerror or exc})"
    extras = ", no TCP" if abi >= 4 else ""
    extras += ", signals and abstract sockets scoped" if abi >= 6 else ""
    return (f"on (ABI {abi}: writes only in scratch, reads only of the interpreter, "
            f"its packages, scratch and system files{extras})")


def _apply_seccomp(plan: Plan) -> str:
    if not plan.config.seccomp:
        return "off (disabled in config)"
    try:
        seccomp.install()
    except OSError as exc:
        return f"off ({exc.strerror or exc})"
    return ("on (no exec, no internet sockets, no setsid/setpgid, no kill, no ptrace, "
            "no namespaces, no SysV IPC or message queues, no memfd, no fallocate)")
