"""The caller's side: ``SandboxPool`` spawns the manager once and hands out async sessions.

Replies are read by the event loop itself (no thread hop on the hot path); the pool follows the
loop of its latest call, so one pool can serve several ``asyncio.run`` calls in turn. If the
manager dies, the sessions of that moment fail and the next ``open_session`` starts a new one,
after the dead manager's processes and scratch directories are cleaned up.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import subprocess
import sys
import threading
from types import TracebackType

from sandbox import sweep
from sandbox.api import ExecResult
from sandbox.config import SandboxConfig
from sandbox.protocol import FrameReader, ProtocolError, encode, read_frame_blocking

log = logging.getLogger("sandbox")
MAX_RESTARTS = 8  # a manager that keeps dying is broken, not unlucky
_STATUSES = {"ok", "error", "timeout", "memory", "crashed", "exited"}


class SandboxError(RuntimeError):
    """The sandbox could not do what was asked (manager gone, session closed, bad request)."""


def manager_env() -> dict[str, str]:
    """A clean environment: nothing of the harness's environment reaches the sandbox."""
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONUTF8": "1",
            "PYTHONPATH": package_root, "PYTHONDONTWRITEBYTECODE": "1",
            "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            "MALLOC_ARENA_MAX": "2"}


class SandboxSession:
    """One solution stream's state; cells run one at a time, in call order."""

    def __init__(self, pool: SandboxPool, sid: int, report: dict[str, str],
                 generation: int) -> None:
        self._pool = pool
        self.sid = sid
        self.protections = report
        self.generation = generation  # which manager of the pool holds this session
        self._lock = asyncio.Lock()
        self._closed = False

    def _check_alive(self) -> None:
        if self._closed:
            raise SandboxError("session is closed")
        if self.generation != self._pool.generation:
            raise SandboxError("the sandbox manager was restarted: this session's state is gone")

    async def run(self, code: str, timeout: float | None = None) -> ExecResult:
        self._check_alive()
        async with self._lock:
            self._check_alive()
            reply = await self._pool.request({"op": "run", "session": self.sid, "code": code,
                                              "timeout": timeout})
        result = reply.get("result")
        try:
            assert isinstance(result, dict) and result["status"] in _STATUSES
            return ExecResult(status=result["status"], stdout=str(result["stdout"]),
                              stderr=str(result["stderr"]),
                              elapsed_s=float(result["elapsed_s"]),
                              truncated=bool(result["truncated"]))
        except (AssertionError, KeyError, TypeError, ValueError):
            raise SandboxError("malformed result from the sandbox manager") from None

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._pool.running and self.generation == self._pool.generation:
            await self._pool.request({"op": "close", "session": self.sid})


class SandboxPool:
    """Implements ``sandbox.api.CodeRunner``; the manager starts on first use."""

    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.config.validate()
        self._proc: subprocess.Popen[bytes] | None = None
        self._pending: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._ids = itertools.count(1)
        self._start_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._frames = FrameReader()
        self._failure: str | None = None
        self._closed = False  # closed by the caller: never restarted
        self._lock_dir: str | None = None  # where the manager's uid locks live (root only)
        self._pgids: set[int] = set()  # process groups of the live manager's sessions
        self.generation = 0
        self.restarts = 0
        self.manager_pid: int | None = None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None and self._failure is None

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def start(self) -> None:
        await asyncio.to_thread(self.start_sync)

    def start_sync(self) -> None:
        """Spawn the manager (again, if it died) and wait for its hello."""
        with self._start_lock:
            if self._closed:
                raise SandboxError("the sandbox pool is closed")
            if self._proc is not None:
                if self._proc.poll() is None and self._failure is None:
                    return
                if self.restarts >= MAX_RESTARTS:
                    raise SandboxError(f"the sandbox manager died {self.restarts + 1} times; "
                                       "not restarting it again")
                self._bury()
            self._spawn()

    def _spawn(self) -> None:
        """Start a manager; its hello comes once it imported the warm modules."""
        config_json = json.dumps(self.config.to_json())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "sandbox.manager", config_json],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=manager_env(),
            cwd="/", close_fds=True)
        assert self._proc.stdout is not None
        hello = read_frame_blocking(self._proc.stdout.fileno())
        if hello is None or hello.get("op") != "hello":
            self._failure = "the sandbox manager failed to start"
            raise SandboxError(self._failure)
        self.manager_pid = int(hello["pid"])  # type: ignore[arg-type]
        lock_dir = hello.get("lock_dir")
        self._lock_dir = lock_dir if isinstance(lock_dir, str) else None
        self.generation += 1
        os.set_blocking(self._proc.stdout.fileno(), False)

    def _bury(self) -> None:
        """The manager died (or broke its protocol): fail what waited on it, kill what it left
        running, remove its scratch directories, and log it. Called with the start lock held."""
        proc, pid = self._proc, self.manager_pid
        assert proc is not None and proc.stdout is not None and proc.stdin is not None
        if proc.poll() is None:
            proc.kill()
        returncode = proc.wait()
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(proc.stdout.fileno())
        self._fail_pending("the sandbox manager exited")
        self._loop = None
        for stream in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):
                stream.close()
        killed, removed = sweep.bury_manager(pid, self.config.scratch_root, self._lock_dir,
                                             sorted(self._pgids))
        log.warning("the sandbox manager (pid %s) exited with status %s; restarting it "
                    "(killed %d left-over processes, removed %d scratch directories)",
                    pid, returncode, killed, removed)
        self._pgids.clear()
        self._frames = FrameReader()
        self._failure = None
        self._proc = None
        self.restarts += 1

    def _attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Read replies on ``loop``; requests still waiting on an earlier loop fail."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(fd)
        self._fail_pending("the sandbox pool moved to another event loop")
        self._loop = loop
        loop.add_reader(fd, self._on_readable, fd)

    def _on_readable(self, fd: int) -> None:
        try:
            data = os.read(fd, 1 << 20)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        try:
            replies = self._frames.feed(data) if data else None
        except ProtocolError:
            replies = None
        if replies is None:
            assert self._loop is not None
            self._loop.remove_reader(fd)
            self._failure = self._failure or "the sandbox manager exited"
            self._fail_pending(self._failure)
            return
        for reply in replies:
            future = self._pending.pop(reply.get("id"), None)  # type: ignore[arg-type]
            if future is not None and not future.done():
                future.set_result(reply)

    def _fail_pending(self, why: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(SandboxError(why))
        self._pending.clear()

    def _write(self, message: dict[str, object]) -> int:
        request_id = next(self._ids)
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(encode({**message, "id": request_id}))
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise SandboxError(f"the sandbox manager is gone: {exc}") from None
        return request_id

    async def request(self, message: dict[str, object]) -> dict[str, object]:
        if self._proc is None:
            await self.start()
        if not self.running:
            raise SandboxError(self._failure or "the sandbox manager is not running")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._attach(loop)
        future: asyncio.Future[dict[str, object]] = loop.create_future()
        self._pending[self._write(message)] = future
        reply = await future
        if not reply.get("ok"):
            raise SandboxError(str(reply.get("error", "sandbox request failed")))
        return reply

    async def open_session(self) -> SandboxSession:
        await self.start()
        reply = await self.request({"op": "open"})
        report = reply.get("report")
        pgid = reply.get("pgid")
        if isinstance(pgid, int) and pgid > 1:
            self._pgids.add(pgid)
        return SandboxSession(self, int(reply["session"]),  # type: ignore[arg-type]
                              report if isinstance(report, dict) else {}, self.generation)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    def close_sync(self, timeout: float = 10.0) -> None:
        """Stop the manager; it kills every session's processes and removes their scratch."""
        with self._start_lock:
            self._closed = True
            proc = self._proc
            if proc is None or proc.poll() is not None:
                if proc is not None and self.manager_pid is not None:  # died: clean up after it
                    sweep.bury_manager(self.manager_pid, self.config.scratch_root,
                                       self._lock_dir, sorted(self._pgids))
                return
            with contextlib.suppress(SandboxError):
                self._write({"op": "shutdown"})
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.close()  # the manager also shuts down at end of input
                proc.wait(timeout)
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
            if self._loop is not None and not self._loop.is_closed():
                self._loop.remove_reader(proc.stdout.fileno())
            self._failure = "the sandbox pool is closed"
            self._fail_pending(self._failure)
            proc.stdout.close()
