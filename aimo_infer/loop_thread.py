"""An asyncio event loop in a daemon thread, fed coroutines by other threads.

Kaggle calls ``predict`` from a server thread; the engine and the sandbox are async. The loop
runs here so a caller can wait on a result with a hard timeout and walk away from a hung solve.
Service tasks (loads, pings) are marked as they are created, so a cleanup can tell them from
what a cut-off solve left behind; tasks that ignore cancellation are given up once, not waited
on by every later cleanup.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """One event loop, one daemon thread; ``submit`` from any other thread."""

    def __init__(self, name: str = "aimo-predict-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._service: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self._abandoned: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()
        self.thread = threading.Thread(target=_run_loop, args=(self.loop,), name=name,
                                       daemon=True)
        self.thread.start()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T], service: bool = True) \
            -> concurrent.futures.Future[T]:
        """Run ``coro`` on the loop; service tasks survive ``cancel_leftovers``.

        Like ``asyncio.run_coroutine_threadsafe``, but the task is marked as it is created, so
        a cleanup running at that moment cannot mistake it for a leftover.
        """
        loop = self.loop
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def create() -> None:
            if future.cancelled():
                coro.close()
                return
            task = loop.create_task(coro)
            if service:
                self._service.add(task)
            task.add_done_callback(lambda done: _copy_outcome(done, future))
            future.add_done_callback(
                lambda f: f.cancelled() and loop.call_soon_threadsafe(task.cancel))

        try:
            loop.call_soon_threadsafe(create)
        except RuntimeError:  # the loop is closed
            coro.close()
            future.cancel()
        return future

    def responsive(self, timeout: float) -> bool:
        """Whether the loop runs a no-op within ``timeout`` (False: something blocks it)."""
        ping = self.submit(asyncio.sleep(0))
        try:
            ping.result(timeout=timeout)
            return True
        except BaseException:
            ping.cancel()
            return False

    async def cancel_leftovers(self, timeout: float) -> bool:
        """On the loop: cancel every non-service task; True when all ended within ``timeout``."""
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks()
                     if t is not current and t not in self._service and t not in self._abandoned]
        for task in leftovers:
            task.cancel()
        if not leftovers:
            return True
        _, pending = await asyncio.wait(leftovers, timeout=timeout)
        for task in pending:
            self._abandoned.add(task)
        return not pending

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop (callbacks already queued run first) and wait for the thread."""
        with contextlib.suppress(RuntimeError):  # already closed
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)

    def stop_when_free(self, last: Coroutine[Any, Any, Any]) -> None:
        """For a blocked loop given up on: once it runs again, cancel leftovers, run ``last``
        (closing what it held), then stop. Returns at once."""

        async def wind_up() -> None:
            try:
                await self.cancel_leftovers(timeout=5.0)
                await last
            finally:
                asyncio.get_running_loop().stop()

        self.submit(wind_up())


def run_in_daemon_thread(fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
    """Await a blocking call run in a daemon thread (a hung engine load must not block exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if future.done():
            return
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)

    def target() -> None:
        try:
            value = fn(*args)
        except BaseException as exc:
            outcome: tuple[Any, BaseException | None] = (None, exc)
        else:
            outcome = (value, None)
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=target, name="aimo-load", daemon=True).start()
    return future


def _copy_outcome(task: asyncio.Task[T], future: concurrent.futures.Future[T]) -> None:
    """Hand a finished task's result to the caller's future (unless the caller gave up)."""
    if future.cancelled():
        return
    if task.cancelled():
        future.cancel()
    elif task.exception() is not None:
        future.set_exception(task.exception())  # type: ignore[arg-type]
    else:
        future.set_result(task.result())


def _run_loop(loop: asyncio.AbstractEventLoop) -> None:
    """The thread's body: run until stopped, then release the loop's resources."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        loop.close()
