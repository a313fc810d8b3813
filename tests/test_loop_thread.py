"""The background event loop: submit from another thread, cleanups spare service tasks."""

from __future__ import annotations

import asyncio
import contextlib
import threading

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


async def _new_event() -> asyncio.Event:
    return asyncio.Event()


def test_cleanup_cancels_leftovers_but_not_service_tasks() -> None:
    worker = LoopThread()
    try:
        gate = worker.submit(_new_event()).result(timeout=5)

        async def service_task() -> str:
            await gate.wait()
            return "kept"

        leftover = worker.submit(asyncio.Event().wait(), service=False)
        service = worker.submit(service_task())
        assert worker.submit(worker.cancel_leftovers(timeout=5)).result(timeout=5) is True
        assert leftover.cancelled() and not service.done()  # still waiting, not cancelled
        worker.loop.call_soon_threadsafe(gate.set)
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
    release = threading.Event()
    # Queued before the ping, a synchronous call holds the loop until released.
    worker.loop.call_soon_threadsafe(release.wait, 30)
    try:
        assert not worker.responsive(timeout=0.05)
    finally:
        release.set()
    assert worker.responsive(timeout=30)  # and answers again once the call returns
    worker.stop(timeout=5)


def test_blocking_calls_run_off_the_loop() -> None:
    worker = LoopThread()
    release = threading.Event()

    def blocking() -> tuple[bool, threading.Thread]:
        return release.wait(30), threading.current_thread()

    async def load() -> tuple[bool, threading.Thread]:
        pending = run_in_daemon_thread(blocking)
        await asyncio.sleep(0)  # reached only while the call blocks elsewhere
        release.set()  # ran on the loop, the call would wait its 30 s and return False
        return await pending

    try:
        released, thread = worker.submit(load()).result(timeout=60)
        assert released and thread.daemon and thread is not worker.thread
    finally:
        worker.stop(timeout=5)
