"""How many CPU threads llama.cpp should use, from how much of our cores other processes take.

llama.cpp's threads meet at a barrier after every operation (hundreds per token). Waiting there
by spinning is much faster than sleeping on an idle machine (measured here on 2 cores: 12 streams
~170 vs ~146 tok/s, one stream +30-60%), but when another process holds one of the cores (a
sandbox running a code cell, a second engine) a spinning thread waits for a partner that is not
running and throughput collapses (24-60 tok/s). One thread has no barrier and keeps ~105 tok/s
whatever else runs. So the decode loop spins, and a ``ThreadGovernor`` drops to fewer threads
while other processes use our cores, and goes back up once they stop.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

# Other processes' use of our cores (in cores) above which a thread is given up, and below which
# one is taken back: the gap keeps short code cells from flipping the count at every window.
GIVE_UP_AT = 0.5
TAKE_BACK_BELOW = 0.3


def threads_for(others: float, n_cores: int, max_threads: int, current: int) -> int:
    """The thread count for the next window, given the cores other processes just used."""
    if others > GIVE_UP_AT:
        free = n_cores - others
        return max(1, min(max_threads, int(free + 0.5)))  # the free cores, rounded, at least one
    if others < TAKE_BACK_BELOW:
        return max_threads
    return current


def cgroup_cpu_limit(
    root: Path = Path("/sys/fs/cgroup"), self_cgroup: str | None = None
) -> float | None:
    """CPUs this process's cgroup quota allows (cgroup v2 cpu.max or v1 CFS quota); None if none.

    A container given 2 CPUs of quota on a 64-core host still sees 64 cores in its affinity mask;
    spinning threads beyond the quota are throttled in bursts.
    """
    if self_cgroup is None:
        try:
            self_cgroup = Path("/proc/self/cgroup").read_text()
        except OSError:
            return None
    for line in self_cgroup.splitlines():
        _id, controllers, group = line.split(":", 2)
        group = group.lstrip("/")
        if controllers == "":  # v2: "0::/path", quota and period in one file
            found = _first_readable(root / group / "cpu.max", root / "cpu.max")
            if found is not None:
                quota, _, period = found.partition(" ")
                if quota != "max":
                    return int(quota) / int(period or "100000")
        elif "cpu" in controllers.split(","):  # v1: quota (-1: none) and period, two files
            for where in (root / "cpu" / group, root / "cpu", root / controllers / group):
                quota = _first_readable(where / "cpu.cfs_quota_us")
                if quota is not None:
                    period = _first_readable(where / "cpu.cfs_period_us") or "100000"
                    return int(quota) / int(period) if int(quota) > 0 else None
    return None


def _first_readable(*paths: Path) -> str | None:
    for path in paths:
        try:
            return path.read_text().strip()
        except (OSError, ValueError):
            continue
    return None


def usable_cores() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        limit = cgroup_cpu_limit()
    except ValueError:  # a cgroup file in a shape we do not know: no cap
        limit = None
    return cores if limit is None else max(1, min(cores, int(limit)))


def read_proc_stat(cores: frozenset[int], path: str = "/proc/stat") -> float:
    """CPU seconds the given cores have spent busy since boot (user, system, irq, steal...)."""
    tick = os.sysconf("SC_CLK_TCK")
    busy = 0
    with open(path, "rb") as f:
        for line in f:
            if not line.startswith(b"cpu") or line[3:4] == b" ":
                continue  # the aggregate "cpu " line, or past the per-core lines
            name, *fields = line.split()
            if int(name[3:]) in cores:
                user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
                busy += user + nice + system + irq + softirq + steal
    return busy / tick


def read_own_cpu() -> float:
    """CPU seconds this process has used, all threads (children excluded)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class ThreadGovernor:
    """Re-decides the thread count once per window from /proc/stat and this process's CPU time.

    Only where it can see the contention: on Linux, and when the threads fill every core this
    process may run on (a container limited by a CPU quota rather than a core set sees the whole
    host's cores in /proc/stat, and is left alone).
    """

    def __init__(
        self,
        max_threads: int,
        cores: frozenset[int],
        window_s: float = 0.2,
        counters: Callable[[], tuple[float, float]] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``counters`` gives cumulative CPU seconds (busy on our cores by anyone, this process's
        own); the default reads /proc/stat and getrusage."""
        self.max_threads = max_threads
        self.threads = max_threads
        self.window_s = window_s
        self.changes = 0
        self._n_cores = len(cores)
        self._counters = counters or (lambda: (read_proc_stat(cores), read_own_cpu()))
        self._clock = clock
        self._since = clock()
        self._busy, self._own = self._counters()

    @classmethod
    def for_this_process(cls, max_threads: int) -> ThreadGovernor | None:
        """A governor when contention can be seen here and matters (see the class), else None."""
        try:
            cores = frozenset(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            return None
        if max_threads < 2 or len(cores) != max_threads:
            return None
        try:
            return cls(max_threads, cores)  # reads /proc/stat once
        except (OSError, ValueError):
            return None

    def update(self) -> int | None:
        """The new thread count when it should change now, else None (cheap within a window)."""
        now = self._clock()
        elapsed = now - self._since
        if elapsed < self.window_s:
            return None
        busy, own = self._counters()
        others = max(0.0, (busy - self._busy) - (own - self._own)) / elapsed
        self._since, self._busy, self._own = now, busy, own
        wanted = threads_for(others, self._n_cores, self.max_threads, self.threads)
        if wanted == self.threads:
            return None
        self.threads = wanted
        self.changes += 1
        return wanted
