"""Primitives of the manager's event loop: signalable processes, CPU clocks, timers."""

from __future__ import annotations

import contextlib
import heapq
import itertools
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass


def cpu_seconds(pid: int) -> float:
    """CPU time of a live process, from the kernel's per-process clock."""
    return time.clock_gettime(((~pid) << 3) | 2)


class Timers:
    """A heap of callbacks keyed by monotonic deadline."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None], object]] = []
        self._seq = itertools.count()

    def at(self, when: float, callback: Callable[[], None], tag: object = None) -> None:
        """Call ``callback`` at ``when``; ``tag`` (a session) is handed to the guard with it."""
        heapq.heappush(self._heap, (when, next(self._seq), callback, tag))

    def timeout(self) -> float | None:
        if not self._heap:
            return None
        return max(0.0, self._heap[0][0] - time.monotonic())

    def run_due(self, guard: Callable[[Callable[[], None], object], None] | None = None) -> None:
        """Run the due callbacks, each through ``guard(callback, tag)`` when one is given."""
        now = time.monotonic()
        while self._heap and self._heap[0][0] <= now:
            _when, _seq, callback, tag = heapq.heappop(self._heap)
            if guard is None:
                callback()
            else:
                guard(callback, tag)


@dataclass
class Proc:
    """A process the manager may signal; the pidfd makes signals immune to pid reuse."""

    pid: int
    pidfd: int

    @classmethod
    def open(cls, pid: int) -> Proc:
        return cls(pid, os.pidfd_open(pid))

    def kill(self, sig: int = signal.SIGKILL) -> None:
        with contextlib.suppress(OSError):
            signal.pidfd_send_signal(self.pidfd, sig)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.pidfd)
