"""Finding and killing processes a cell left behind, from outside the sandbox.

A session's processes are recognised by their uid (root: one uid per session) or by their
process group (otherwise; the seccomp filter forbids leaving it). After a cell only pids
created since the cell started can be strays, so the scan looks at that pid window only.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Callable, Container, Iterable

Owner = Callable[[int], bool]
LAST_PID = "/proc/sys/kernel/ns_last_pid"


def last_pid() -> int:
    """The most recently allocated pid in this pid namespace (-1 if the kernel hides it)."""
    try:
        with open(LAST_PID, "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return -1


def pid_max() -> int:
    try:
        with open("/proc/sys/kernel/pid_max", "rb") as handle:
            return int(handle.read())
    except (OSError, ValueError):
        return 4_194_304


def in_window(pid: int, since: int, until: int) -> bool:
    """Whether ``pid`` was allocated after ``since`` and up to ``until`` (pids wrap around)."""
    if since < 0 or until < 0:
        return True
    if until >= since:
        return since < pid <= until
    return pid > since or pid <= until


def uid_owner(uid: int) -> Owner:
    def owns(pid: int) -> bool:
        try:
            return os.stat(f"/proc/{pid}").st_uid == uid
        except OSError:
            return False

    return owns


def pgid_owner(pgid: int) -> Owner:
    def owns(pid: int) -> bool:
        try:
            with open(f"/proc/{pid}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
            return int(fields[2]) == pgid
        except (OSError, IndexError, ValueError):
            return False

    return owns


def pids(since: int = -1, until: int = -1) -> list[int]:
    """Pids allocated in the window (all pids without one); a short window is not listed from
    /proc but probed pid by pid (a pid that no longer exists fails the owner check later)."""
    if 0 <= since <= until and until - since <= 512:
        return list(range(since + 1, until + 1))
    found = []
    with os.scandir("/proc") as entries:
        for entry in entries:
            name = entry.name
            if name.isdigit():
                pid = int(name)
                if in_window(pid, since, until):
                    found.append(pid)
    return found


def window_explained(since: int, until: int, known: Container[int]) -> bool:
    """Whether every pid allocated in (since, until] is one the caller created itself: then no
    process of a session can have been created, and the /proc scan can be skipped."""
    if since < 0 or until < since or until - since > 256:
        return False
    return all(pid in known for pid in range(since + 1, until + 1))


def wait_gone(pidfds: list[int], timeout_s: float) -> None:
    """Wait until every process behind ``pidfds`` has exited (a killed process needs a moment)."""
    import select
    import time

    deadline = time.monotonic() + timeout_s
    waiting = list(pidfds)
    while waiting and time.monotonic() < deadline:
        poller = select.poll()
        for fd in waiting:
            poller.register(fd, select.POLLIN)
        ready = {fd for fd, _event in poller.poll(max(1, int((deadline - time.monotonic()) * 1000)))}
        waiting = [fd for fd in waiting if fd not in ready]


def kill_strays(owner: Owner, keep: Iterable[int], since: int = -1, max_rounds: int = 200,
                wait_s: float = 0.0) -> int:
    """SIGKILL every process ``owner`` claims, except ``keep``, until a scan finds none new.

    A process being killed cannot complete a fork, so repeating the scan converges even for
    fork bombs (whose size the process limit bounds anyway). Returns how many were killed.
    """
    seen = set(keep)
    killed: list[int] = []
    try:
        for _ in range(max_rounds):
            fresh = [pid for pid in pids(since, last_pid() if since >= 0 else -1)
                     if pid not in seen]
            hits = [fd for fd in (_kill_if_owned(pid, owner) for pid in fresh) if fd is not None]
            seen.update(fresh)
            killed += hits
            if not hits:
                break
        if wait_s:
            wait_gone(killed, wait_s)
    finally:
        for fd in killed:
            os.close(fd)
    return len(killed)


def _kill_if_owned(pid: int, owner: Owner) -> int | None:
    """Kill through a pidfd, checked after it pins the process, so a recycled pid is never hit.
    Returns the pidfd of a killed process (the caller closes it)."""
    if not owner(pid):  # cheap filter first
        return None
    try:
        handle = os.pidfd_open(pid)
    except OSError:
        return None
    if not owner(pid):
        os.close(handle)
        return None
    with contextlib.suppress(OSError):
        signal.pidfd_send_signal(handle, signal.SIGKILL)
    return handle


def bury_manager(manager_pid: int | None, scratch_root: str, lock_dir: str | None,
                 pgids: Iterable[int]) -> tuple[int, int]:
    """Clean up after a manager that died: kill its sessions' processes and remove their
    scratch directories. A session's uid is read from its scratch directory's owner and swept
    only while this process holds that uid's lock (a uid someone else took is theirs now).
    Returns (processes killed, directories removed)."""
    import fcntl
    import shutil

    killed = removed = 0
    prefix = f"s{manager_pid}-"
    try:
        names = [name for name in os.listdir(scratch_root) if name.startswith(prefix)]
    except OSError:
        names = []
    if manager_pid is None:
        names = []
    mine = os.geteuid()
    uids = set()
    for name in names:
        with contextlib.suppress(OSError):
            uid = os.stat(os.path.join(scratch_root, name)).st_uid
            if uid != mine:
                uids.add(uid)
    for uid in sorted(uids):
        if lock_dir is None:
            continue
        try:
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue
        try:
            killed += kill_strays(uid_owner(uid), (), wait_s=2.0)
        finally:
            os.close(fd)  # releases the lock
    for pgid in pgids:
        killed += kill_strays(pgid_owner(pgid), (), wait_s=2.0)
    for name in names:
        shutil.rmtree(os.path.join(scratch_root, name), ignore_errors=True)
        removed += not os.path.exists(os.path.join(scratch_root, name))
    return killed, removed


def disk_usage(root: str, max_entries: int) -> tuple[int, int]:
    """Bytes allocated below ``root`` and the number of entries, counting stops past
    ``max_entries`` (a directory of a million empty files is over quota, not slow to check)."""
    used = entries = 0
    stack = [root]
    while stack and entries <= max_entries:
        try:
            with os.scandir(stack.pop()) as listing:
                for entry in listing:
                    entries += 1
                    with contextlib.suppress(OSError):
                        info = entry.stat(follow_symlinks=False)
                        used += info.st_blocks * 512
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
        except OSError:
            continue
    return used, entries
