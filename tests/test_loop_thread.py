"""The background event loop: submit from another thread, cleanups spare service tasks."""

from __future__ import annotations

import asyncio
import contextlib
import time

from aimo_infer.loop_thread import LoopThread, run_in_daemon_thread


def test_submit_returns_results_and_errors_across_threads() -> None:
    worker = LoopThread()
    try:
        assert worker.submit(asyncio.sleep(0, "done")).result(timeout=5) == "done"

        async def fail() -> None:
            raise ValueError("bad")

        error = worker.submit(fail()).exception(timeout=5)
        assert isinstance(error, ValueError)
        assert worker.responsive(timeout=5)
    finally:
        worker.stop(timeout=5)
    assert not worker.alive


def test_cleanup_cancels_leftovers_but_not_service_tasks() -> None:
    worker = LoopThread()
    try:
        leftover = worker.submit(asyncio.Event().wait(), service=False)
        service = worker.submit(asyncio.sleep(0.2, "kept"))
        assert worker.submit(worker.cancel_leftovers(timeout=5)).result(timeout=5) is True
        assert leftover.cancelled()
        assert service.result(timeout=5) == "kept"
    finally:
        worker.stop(timeout=5)


def test_a_task_that_ignores_cancel_is_given_up_once() -> None:
    released: list[bool] = []

    async def wedged() -> None:
        while not released:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.Event().wait()

    worker = LoopThread()
    try:
        task = worker.submit(wedged(), service=False)
        first = worker.submit(worker.cancel_leftovers(timeout=0.05)).result(timeout=5)
        second = worker.submit(worker.cancel_leftovers(timeout=5)).result(timeout=5)
        assert (first, second) == (False, True)  # the second cleanup does not wait for it
    finally:
        released.append(True)
        task.cancel()  # one more cancel lets it see the flag and end
        worker.stop(timeout=5)


def test_a_blocked_loop_is_not_responsive() -> None:
    worker = LoopThread()
    # Queued before the ping, a synchronous call holds the loop for longer than the ping waits.
    worker.loop.call_soon_threadsafe(time.sleep, 0.5)
    assert not worker.responsive(timeout=0.05)
    assert worker.responsive(timeout=5)  # and answers again once the call returns
    worker.stop(timeout=5)


def test_blocking_calls_run_off_the_loop() -> None:
    worker = LoopThread()

    async def load() -> tuple[int, bool]:
        pending = run_in_daemon_thread(time.sleep, 0.2)
        alive = await asyncio.sleep(0, True)  # the loop keeps running meanwhile
        await pending
        return 1, alive

    try:
        assert worker.submit(load()).result(timeout=5) == (1, True)
    finally:
        worker.stop(timeout=5)
