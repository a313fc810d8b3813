"""Ending streams on time whatever the engine does: bounded grace, background cancels.

An engine's ``cancel`` may raise, hang or be ignored, and a stream task may swallow its own
cancellation; none of that may hold ``solve()`` past its deadline by more than the grace, which
scales with the allotment so that it stays inside the watchdog's margin of short allotments.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

CANCEL_GRACE_S = 5.0  # the most a cut may wait for its streams to end
GRACE_FRACTION = 0.25  # of the solve window; the watchdog keeps at least half of it as margin
MIN_GRACE_S = 0.01

# Cancels still running in the background (an engine whose cancel hangs): kept referenced so
# that they are not garbage-collected mid-flight, and their exceptions are retrieved.
_background: set[asyncio.Task[object]] = set()


def cut_grace(window_s: float | None) -> float:
    """How long a cut waits for its streams: a quarter of the solve window, at most 5 s."""
    if window_s is None:
        return CANCEL_GRACE_S
    return max(MIN_GRACE_S, min(CANCEL_GRACE_S, GRACE_FRACTION * window_s))


def _retrieve(task: asyncio.Task[object]) -> None:
    _background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        exc = task.exception()
        log.warning("engine cancel failed: %s: %s", type(exc).__name__, exc)


def cancel_in_background(
    cancel: Callable[[str], Awaitable[object]], request_ids: Iterable[str]
) -> list[asyncio.Task[object]]:
    """Start ``cancel(rid)`` for each id without waiting for it; never raises."""
    started = []
    for rid in request_ids:
        try:
            task = asyncio.ensure_future(cancel(rid))
        except Exception as exc:  # a cancel that raises before it returns an awaitable
            log.warning("engine cancel of %s failed: %s: %s", rid, type(exc).__name__, exc)
            continue
        _background.add(task)
        task.add_done_callback(_retrieve)
        started.append(task)
    return started


async def end_tasks(tasks: set[asyncio.Task[None]], grace: float) -> set[asyncio.Task[None]]:
    """Wait up to half the grace for ``tasks`` to end by themselves, cancel the late ones, wait
    the other half; returns the tasks that still run (they swallow cancellation: abandon them)."""
    if not tasks:
        return set()
    _, late = await asyncio.wait(tasks, timeout=grace / 2)
    for task in late:
        task.cancel()
    if late:
        _, late = await asyncio.wait(late, timeout=grace / 2)
    return late
