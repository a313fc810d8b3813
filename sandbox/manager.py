"""The trusted manager: spawned once per pool, it owns every session's processes.

This module is its event loop, the pool's requests and opening and closing sessions; the
channel inbox, the cell lifecycle and process supervision live in ``inbox``, ``lifecycle``
and ``supervise``, the records they share in ``state``.

It imports the warm modules once and forks one holder per session from itself (never from the
harness). Each cell runs in place in the holder, whose snapshot (a sleeping fork taken while the
model generates) replaces it when a cell hits a limit. All decisions are made here, from what the
kernel reports (exit statuses, CPU clocks, verified sender pids), never from what a sandboxed
process claims about others.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import shutil
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections import deque
from collections.abc import Callable

from sandbox import confine, holder, outbuf, sweep
from sandbox.config import SandboxConfig
from sandbox.inbox import Inbox
from sandbox.lifecycle import Lifecycle
from sandbox.procs import Proc, Timers
from sandbox.protocol import FrameReader, ProtocolError, encode
from sandbox.state import (
    BOOT_FAILED,
    BOOT_TIMEOUT_S,
    IDLE_CHECK_S,
    MAX_CODE_BYTES,
    PR_SET_CHILD_SUBREAPER,
    PR_SET_PDEATHSIG,
    Session,
)
from sandbox.supervise import Supervision


class Manager(Inbox, Lifecycle, Supervision):
    """Event loop over the pool's requests, the session channels, child exits and timers."""

    def __init__(self, config: SandboxConfig, out_fd: int) -> None:
        self.config = config
        self.out_fd = out_fd
        self.selector = selectors.DefaultSelector()
        self.timers = Timers()
        self.sessions: dict[int, Session] = {}
        self.by_holder: dict[int, Session] = {}
        self.exits: dict[int, tuple[int, float]] = {}
        self.known_pids: deque[int] = deque(maxlen=512)  # pids this manager saw created
        self.reader = FrameReader()
        self.next_sid = itertools.count(1)
        self.stopping = False
        self.pid_limit = sweep.pid_max()
        import ctypes

        self.libc = ctypes.CDLL(None)
        self.root = os.geteuid() == 0
        self.separate_uid = self.root and config.separate_uid
        os.makedirs(config.scratch_root, mode=0o711, exist_ok=True)
        self.lock_dir = os.path.join(tempfile.gettempdir(), "aimo-sandbox-uids")  # machine-wide
        if self.separate_uid:
            os.makedirs(self.lock_dir, mode=0o700, exist_ok=True)

    # ----- loop
    def serve(self) -> None:
        wake_r, wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._on_term)
        self.selector.register(wake_r, selectors.EVENT_READ,
                               (lambda: self._on_wake(wake_r), None))
        self.selector.register(0, selectors.EVENT_READ, (self._on_stdin, None))
        self._send_pool({"op": "hello", "pid": os.getpid(), "root": self.root,
                         "lock_dir": self.lock_dir if self.separate_uid else None})
        while not self.stopping:
            for key, _mask in self.selector.select(self.timers.timeout()):
                callback, session = key.data
                self._guarded(callback, session)
            self.timers.run_due(self._guarded)
        self.shutdown()

    def _guarded(self, callback: Callable[[], None], session: Session | None) -> None:
        """Run one event handler; a failure ends the session it concerns, never the loop."""
        try:
            callback()
        except Exception:
            traceback.print_exc(file=sys.stderr)
            if session is not None and session.phase != "closed":
                with contextlib.suppress(Exception):
                    self._abandon(session, "the sandbox lost track of this session")

    def _abandon(self, session: Session, why: str) -> None:
        """Close a session the manager can no longer run; its waiting callers get ``why``."""
        waiting = [session.cell.request_id] if session.cell and not session.cell.replay else []
        waiting += [pending.get("id") for pending in session.queue]
        if session.phase == "booting":
            waiting.append(session.open_request)
        session.cell = None
        session.queue.clear()
        self._close_session(session)
        for request_id in waiting:
            self._reply(request_id, ok=False, error=why)

    def _on_term(self, *_: object) -> None:
        self.stopping = True

    def _on_wake(self, fd: int) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(fd, 4096):
                pass
        self._reap()

    def _reap(self) -> None:
        while True:
            try:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exits[pid] = (status, usage.ru_utime + usage.ru_stime)
            session = self.by_holder.get(pid)
            if session is not None:
                self._on_holder_exit(session, pid)
            else:
                self.exits.pop(pid, None)

    def _on_stdin(self) -> None:
        data = os.read(0, 1 << 20)
        if not data:
            self.stopping = True
            return
        try:
            messages = self.reader.feed(data)
        except ProtocolError:
            self.stopping = True
            return
        for message in messages:
            self._on_request(message)

    def _send_pool(self, message: dict[str, object]) -> None:
        data = encode(message)
        view = memoryview(data)
        while view:
            written = os.write(self.out_fd, view)
            view = view[written:]

    def _reply(self, request_id: object, **fields: object) -> None:
        self._send_pool({"id": request_id, **fields})

    # ----- pool requests
    def _on_request(self, message: dict[str, object]) -> None:
        op = message.get("op")
        request_id = message.get("id")
        try:
            if op == "open":
                self._open_session(request_id)
            elif op == "run":
                session = self._session(message)
                session.queue.append(message)
                self._next_cell(session)
            elif op == "close":
                self._close_session(self._session(message))
                self._reply(request_id, ok=True)
            elif op == "shutdown":
                self.stopping = True
                self.shutdown()
                self._reply(request_id, ok=True)
            else:
                raise ValueError(f"unknown op {op!r}")
        except (ValueError, OSError) as exc:
            self._reply(request_id, ok=False, error=str(exc))
        except Exception as exc:
            traceback.print_exc(file=sys.stderr)
            self._reply(request_id, ok=False, error=f"sandbox manager error: {exc!r}")

    def _session(self, message: dict[str, object]) -> Session:
        sid = message.get("session")
        session = self.sessions.get(sid) if isinstance(sid, int) else None
        if session is None or session.phase == "closed":
            raise ValueError(f"no open session {sid!r}")
        return session

    # ----- sessions
    def _allocate_uid(self) -> tuple[int | None, int | None]:
        if not self.separate_uid:
            return None, None
        import fcntl

        for uid in range(self.config.uid_base, self.config.uid_base + self.config.uid_count):
            fd = os.open(os.path.join(self.lock_dir, str(uid)), os.O_CREAT | os.O_RDWR
                         | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            sweep.kill_strays(sweep.uid_owner(uid), ())  # leftovers of a crashed manager
            return uid, fd
        raise OSError("no free sandbox uid left")

    def _open_session(self, request_id: object) -> None:
        sid = next(self.next_sid)
        uid, uid_lock = self._allocate_uid()
        scratch = os.path.join(self.config.scratch_root, f"s{os.getpid()}-{sid}")
        os.makedirs(scratch, mode=0o700)
        if uid is not None:
            os.chown(scratch, uid, uid)
        cap = self.config.max_output_bytes
        out_fd = outbuf.create_buffer(cap)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        for end in (mine, theirs):
            with contextlib.suppress(OSError):
                end.setsockopt(socket.SOL_SOCKET, 32, 4 * MAX_CODE_BYTES)  # SO_SNDBUFFORCE
        pid = self._fork_holder(scratch, uid, theirs.fileno(), out_fd)
        theirs.close()
        owner = sweep.uid_owner(uid) if uid is not None else sweep.pgid_owner(pid)
        session = Session(sid, scratch, uid, uid_lock, mine, out_fd,
                          outbuf.map_buffer(out_fd, cap), owner, open_request=request_id,
                          pgid=pid)
        session.holder = Proc.open(pid)
        self.sessions[sid] = session
        self.by_holder[pid] = session
        self.selector.register(mine, selectors.EVENT_READ,
                               (lambda: self._on_channel(session), session))
        self.timers.at(time.monotonic() + BOOT_TIMEOUT_S, lambda: self._boot_timeout(session),
                       session)
        self.timers.at(time.monotonic() + IDLE_CHECK_S, lambda: self._patrol(session), session)

    def _fork_holder(self, scratch: str, uid: int | None, chan_fd: int, out_fd: int) -> int:
        plan = confine.Plan(scratch, uid, self.config, (chan_fd, out_fd))
        manager_pid = os.getpid()
        pid = os.fork()
        if pid:
            return pid
        try:  # the child: confine, then serve cells forever
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGCHLD, signal.SIGTERM):
                signal.signal(sig, signal.SIG_DFL)
            self.libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
            if os.getppid() != manager_pid:  # the manager died while forking
                os._exit(BOOT_FAILED)
            report = confine.apply(plan)
            holder.main(chan_fd, out_fd, self.config.max_output_bytes, report)
        finally:
            os._exit(BOOT_FAILED)

    def _boot_timeout(self, session: Session) -> None:
        if session.phase == "booting":
            request_id = session.open_request
            self._close_session(session)
            self._reply(request_id, ok=False, error="the sandbox holder did not start")

    def _close_session(self, session: Session) -> None:
        if session.phase == "closed":
            return
        session.phase = "closed"
        procs = [proc for proc in (session.holder, session.snapshot, session.promoting) if proc]
        for proc in procs:
            proc.kill()
            self.by_holder.pop(proc.pid, None)
        sweep.kill_strays(session.owner, (), wait_s=2.0)
        sweep.wait_gone([proc.pidfd for proc in procs], 2.0)
        for proc in procs:
            proc.close()
        if session.cell is not None:
            self._reply(session.cell.request_id, ok=False, error="session closed")
        for pending in session.queue:
            self._reply(pending.get("id"), ok=False, error="session closed")
        session.queue.clear()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(session.chan)
        session.chan.close()
        with contextlib.suppress(Exception):
            session.out_mem.close()  # type: ignore[attr-defined]
        os.close(session.out_fd)
        shutil.rmtree(session.scratch, ignore_errors=True)
        for copy in (".saved", ".next"):
            shutil.rmtree(session.scratch + copy, ignore_errors=True)
        if session.uid_lock is not None:
            os.close(session.uid_lock)
        self.sessions.pop(session.sid, None)

    def shutdown(self) -> None:
        for session in list(self.sessions.values()):
            self._close_session(session)
        prefix = f"s{os.getpid()}-"  # saved copies of scratch included
        with contextlib.suppress(OSError):
            for name in os.listdir(self.config.scratch_root):
                if name.startswith(prefix):
                    shutil.rmtree(os.path.join(self.config.scratch_root, name),
                                  ignore_errors=True)
        self._reap_all(2.0)

    @staticmethod
    def _reap_all(timeout_s: float) -> None:
        """Reap every child (orphans of killed holders land here) so no zombie outlives us."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                pid, _status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                time.sleep(0.005)



def _prepare_process() -> int:
    """Detach from the terminal, adopt orphans, and keep fd 1 for frames only."""
    with contextlib.suppress(OSError):
        os.setsid()
    try:
        import ctypes

        ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    out_fd = os.dup(1)
    os.set_inheritable(out_fd, False)
    os.dup2(2, 1)
    return out_fd


def _preload(modules: tuple[str, ...]) -> None:
    import gc
    import importlib

    for name in modules:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    gc.collect()
    gc.freeze()  # keep collections in holders from touching (and copying) the shared heap


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m sandbox.manager CONFIG_JSON", file=sys.stderr)
        return 2
    config = SandboxConfig.from_json(json.loads(argv[0]))
    config.validate()
    out_fd = _prepare_process()
    _preload(config.preload)
    Manager(config, out_fd).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
