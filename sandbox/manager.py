"""The trusted manager: spawned once per pool, it owns every session's processes.

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
from dataclasses import dataclass, field

from sandbox import channel, confine, files, holder, outbuf, sweep
from sandbox.channel import BadMessage, Boot, CellResult, Ready, SnapshotTaken
from sandbox.config import SandboxConfig
from sandbox.procs import Proc, Timers, cpu_seconds
from sandbox.protocol import FrameReader, ProtocolError, encode

CHANNEL_LOST = 120
BOOT_FAILED = 121
MAX_CODE_BYTES = 1024 * 1024
PROMOTE_TIMEOUT_S = 10.0
SCRATCH_CHECK_S = 0.25  # how often a running cell's scratch directory is measured
IDLE_CHECK_S = 0.5  # how often an idle session's processes are checked for CPU use
IDLE_CPU_S = 0.2  # CPU a holder or a sleeping snapshot may use in that time
BOOT_TIMEOUT_S = 30.0
_ROLLBACK = {"timeout", "memory", "crashed", "exited"}
_SANDBOX_STATUSES = {"ok", "error", "exited", "memory", "crashed"}
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1  # a holder dies with the manager, even in the middle of a cell


@dataclass
class Cell:
    request_id: object
    cpu_limit: float
    wall_limit: float
    started: float
    cpu_start: float
    since_pid: int
    code: str = ""
    replay: bool = False  # re-running a logged cell after a rollback: nobody awaits its result
    output: int = 0  # digest of what the cell printed (a replay must print the same)
    kill_reason: str | None = None
    fault: str = ""  # why the manager stopped the cell (a protocol breach)


@dataclass
class Session:
    sid: int
    scratch: str
    uid: int | None
    uid_lock: int | None
    chan: socket.socket
    out_fd: int
    out_mem: object
    owner: sweep.Owner
    holder: Proc | None = None
    snapshot: Proc | None = None
    promoting: Proc | None = None
    phase: str = "booting"  # booting, idle, running, stopping, promoting, rebooting, closed
    cell: Cell | None = None
    queue: deque[dict[str, object]] = field(default_factory=deque)
    open_request: object = None
    report: dict[str, str] = field(default_factory=dict)
    pgid: int = 0
    log: list[tuple[str, float, int]] = field(default_factory=list)  # code, CPU, output digest
    snapshot_covers: int | None = None  # log entries the requested snapshot will include
    replaying: deque[tuple[str, int]] = field(default_factory=deque)
    note: str = ""  # told to the caller with the next result
    cells_started: int = 0
    messages: int = 0  # datagrams received since the current cell (or holder) started
    muted: bool = False  # a breach was seen: ignore the channel until a new holder speaks
    forget: bool = False  # the next rollback does not replay the last logged cell (hostile)
    patrol_mark: tuple[object, ...] = ()  # holder, cell count and phase at the last patrol
    patrol_cpu: float = 0.0
    patrol_pid: int = -1  # last pid allocated at the last patrol (-1: no window to sweep)
    files_saved: bool = True  # the live snapshot's scratch files were saved (not too large)
    files_pending: bool = True  # the same for the snapshot asked for


class Manager:
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

    # ----- messages from sandboxed processes
    def _on_channel(self, session: Session) -> None:
        """Read at most a burst of datagrams: a flooding cell must not starve other sessions."""
        for _ in range(channel.MAX_MESSAGES_PER_WAKEUP):
            if session.phase == "closed":
                return
            try:
                data, ancdata, flags, _addr = session.chan.recvmsg(
                    channel.MAX_MESSAGE_BYTES + 1, channel.ANCILLARY_SPACE, socket.MSG_DONTWAIT)
            except OSError:  # BlockingIOError included: nothing more to read now
                return
            sender = channel.sender_pid(ancdata)
            if not data and sender is None:  # end of stream: no sandboxed end is open any more
                with contextlib.suppress(KeyError, ValueError):
                    self.selector.unregister(session.chan)
                return
            if session.muted:
                continue
            session.messages += 1
            try:
                if session.messages > channel.MAX_MESSAGES_PER_CELL:
                    raise BadMessage("a flood of messages")
                if flags & socket.MSG_TRUNC:
                    raise BadMessage(f"a message over {channel.MAX_MESSAGE_BYTES} bytes")
                message = channel.parse(data, self.pid_limit)
            except BadMessage as exc:
                self._fault(session, f"sent the sandbox manager {exc}")
                return
            if sender is not None:
                self._on_sandbox_message(session, sender, message)

    def _fault(self, session: Session, why: str) -> None:
        """A sandboxed process broke the channel protocol: stop its holder and roll back."""
        print(f"sandbox manager: session {session.sid}: {why}", file=sys.stderr)
        note = f"\n[sandbox] the cell {why}; it was stopped and the state rolled back\n"
        session.muted = True
        session.forget = True  # the culprit may be a cell that returned and kept running
        if session.phase == "booting":
            self._abandon(session, f"the sandbox holder {why}")
            return
        cell = session.cell
        if cell is not None and session.holder is not None:
            cell.kill_reason = "protocol"
            cell.fault = note
        else:
            session.note += note.lstrip("\n")
            if session.phase == "idle":  # no cell may start on the holder being stopped
                session.phase = "stopping"
        for proc in (session.holder, session.promoting):
            if proc is not None:
                proc.kill()

    def _on_sandbox_message(self, session: Session, sender: int,
                            message: channel.Message) -> None:
        holder = session.holder
        if isinstance(message, Boot) and session.phase in ("booting", "rebooting") and holder \
                and sender == holder.pid:
            session.report = message.report
            if session.phase == "booting":
                self._reply(session.open_request, ok=True, session=session.sid,
                            report=session.report, uid=session.uid, pgid=session.pgid)
            session.phase = "idle"
            session.messages = 0
            session.log.clear()
            self._request_snapshot(session)
            self._next_cell(session)
        elif isinstance(message, SnapshotTaken) and holder and sender == holder.pid \
                and session.snapshot_covers is not None:
            self._register_snapshot(session, message.pid)
        elif isinstance(message, CellResult) and session.cell is not None \
                and holder is not None:
            if sender != holder.pid and not (message.shed and session.owner(sender)):
                return
            if sender != holder.pid:  # the holder forked away stray threads: adopt the copy
                self._replace_holder(session, Proc.open(sender))
            note = "[sandbox] background threads were stopped\n" if message.shed else ""
            self._cell_returned(session, message.status, note)
        elif isinstance(message, Ready) and session.promoting \
                and sender == session.promoting.pid:
            self._replace_holder(session, session.promoting)
            session.promoting = None
            session.phase = "idle"
            session.messages = 0
            if session.forget and session.log:
                session.log.pop()
                session.note += ("[sandbox] the effects of the last cell that returned before "
                                 "this were undone too (it may have kept running)\n")
            session.forget = False
            session.replaying = deque((code, output) for code, _cpu, output in session.log)
            session.log.clear()
            self._continue_replay(session)

    def _replace_holder(self, session: Session, proc: Proc) -> None:
        if session.holder is not None:
            self.by_holder.pop(session.holder.pid, None)
            session.holder.close()
        session.holder = proc
        self.by_holder[proc.pid] = session
        self.known_pids.append(proc.pid)
        if proc.pid in self.exits:  # it died before we adopted it
            self._on_holder_exit(session, proc.pid)

    def _register_snapshot(self, session: Session, pid: int) -> None:
        covers, session.snapshot_covers = session.snapshot_covers, None
        if pid <= 1 or session.holder is None:
            return
        try:
            proc = Proc.open(pid)
        except OSError:
            return
        if not session.owner(pid) or pid == session.holder.pid:
            proc.close()
            return
        if session.snapshot is not None:
            session.snapshot.kill()
            session.snapshot.close()
        session.snapshot = proc
        self.known_pids.append(pid)
        del session.log[:covers or 0]
        shutil.rmtree(session.scratch + ".saved", ignore_errors=True)
        with contextlib.suppress(OSError):
            os.rename(session.scratch + ".next", session.scratch + ".saved")
        session.files_saved = session.files_pending

    def _request_snapshot(self, session: Session) -> None:
        """Fork a snapshot of the holder now (it includes every cell logged so far)."""
        if session.snapshot_covers is not None:
            return
        # The holder is idle: its files now are those the snapshot will go with.
        session.files_pending = files.save(session.scratch, session.scratch + ".next")
        if self._send_session(session, b"S"):
            session.snapshot_covers = len(session.log)

    def _snapshot_when_idle(self, session: Session) -> None:
        """Snapshot once the session has been idle a moment: the model is generating."""
        if self.config.max_replay_cells <= 0:
            self._request_snapshot(session)
            return
        logged = len(session.log)

        def fire() -> None:
            if session.phase == "idle" and session.log and len(session.log) == logged:
                self._request_snapshot(session)

        self.timers.at(time.monotonic() + self.config.snapshot_idle_ms / 1000, fire, session)

    def _snapshot_due(self, session: Session) -> bool:
        """Whether replaying the cells since the snapshot would cost too much."""
        pending = session.log[session.snapshot_covers or 0:]
        return (len(pending) >= self.config.max_replay_cells
                or sum(cpu for _code, cpu, _output in pending) >= self.config.max_replay_cpu_s)

    def _continue_replay(self, session: Session) -> None:
        """After a rollback, re-run the cells the woken snapshot had not seen yet."""
        if session.replaying:
            code, output = session.replaying.popleft()
            self._start_cell(session, code, None, self.config.cpu_time_s, replay_of=output)
            return
        self._request_snapshot(session)
        self._next_cell(session)

    def _send_session(self, session: Session, message: bytes) -> bool:
        try:
            session.chan.send(message, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True

    # ----- cells
    def _next_cell(self, session: Session) -> None:
        if session.phase != "idle" or not session.queue:
            return
        request = session.queue.popleft()
        code = request.get("code")
        if not isinstance(code, str) or len(code.encode("utf-8", "surrogatepass")) > MAX_CODE_BYTES:
            self._reply(request.get("id"), ok=False, error="code must be a string under 1 MiB")
            self._next_cell(session)
            return
        timeout = request.get("timeout")
        cpu_limit = float(timeout) if isinstance(timeout, (int, float)) and timeout > 0 \
            else self.config.cpu_time_s
        if self._snapshot_due(session):
            self._request_snapshot(session)  # the holder forks it before running this cell
        self._start_cell(session, code, request.get("id"), cpu_limit)

    def _start_cell(self, session: Session, code: str, request_id: object, cpu_limit: float,
                    replay_of: int | None = None) -> None:
        """Send a cell to the holder; ``replay_of`` is the output digest of a replayed cell."""
        ratio = self.config.wall_time_s / self.config.cpu_time_s
        wall_limit = max(self.config.wall_time_s, cpu_limit * ratio)
        assert session.holder is not None
        holder_pid = session.holder.pid
        try:
            cpu_start = cpu_seconds(holder_pid)
        except OSError:
            cpu_start = 0.0
        now = time.monotonic()
        cell = Cell(request_id, cpu_limit, wall_limit, now, cpu_start, sweep.last_pid(), code,
                    replay_of is not None, replay_of or 0)
        session.cell = cell
        session.cells_started += 1
        session.messages = 0
        session.phase = "running"
        if not self._send_session(session, b"R" + code.encode("utf-8", "surrogatepass")):
            self._kill_cell(session, cell, "crashed")
            return
        self.timers.at(now + cpu_limit, lambda: self._check_cpu(session, cell), session)
        self.timers.at(now + SCRATCH_CHECK_S, lambda: self._check_scratch(session, cell), session)
        self.timers.at(now + wall_limit, lambda: self._kill_cell(session, cell, "wall"), session)

    def _check_cpu(self, session: Session, cell: Cell) -> None:
        if session.cell is not cell or session.holder is None:
            return
        try:
            used = cpu_seconds(session.holder.pid) - cell.cpu_start
        except OSError:
            return
        if used >= cell.cpu_limit:
            self._kill_cell(session, cell, "cpu")
        else:
            self.timers.at(time.monotonic() + cell.cpu_limit - used + 0.002,
                           lambda: self._check_cpu(session, cell), session)

    def _check_scratch(self, session: Session, cell: Cell) -> None:
        """Stop a cell that fills its scratch directory past the session's quota."""
        if session.cell is not cell:
            return
        if self._scratch_over(session):
            self._kill_cell(session, cell, "disk")
        else:
            self.timers.at(time.monotonic() + SCRATCH_CHECK_S,
                           lambda: self._check_scratch(session, cell), session)

    def _scratch_over(self, session: Session) -> bool:
        limit = self.config.max_scratch_files
        used, entries = sweep.disk_usage(session.scratch, limit)
        return used > self.config.max_scratch_mb * 1024 * 1024 or entries > limit

    def _kill_cell(self, session: Session, cell: Cell, reason: str) -> None:
        if session.cell is not cell or session.holder is None:
            return
        cell.kill_reason = reason
        session.holder.kill()  # the exit arrives through SIGCHLD and finishes the cell

    def _cell_returned(self, session: Session, status: str, note: str) -> None:
        """The holder reported the end of a cell; roll back if the cell hit a limit."""
        cell = session.cell
        assert cell is not None and session.holder is not None
        if status in _ROLLBACK:
            holder = session.holder
            self.by_holder.pop(holder.pid, None)
            holder.kill()
            holder.close()
            session.holder = None
            self._finish_cell(session, status, note)
            if cell.replay:
                self._replay_failed(session)
            else:
                self._promote(session)
            return
        try:
            cpu = cpu_seconds(session.holder.pid) - cell.cpu_start
        except OSError:
            cpu = cell.cpu_limit
        self._finish_cell(session, status, note)
        session.log.append((cell.code, cpu, cell.output))
        session.phase = "idle"
        if cell.replay:
            self._continue_replay(session)
            return
        self._snapshot_when_idle(session)
        self._next_cell(session)

    def _patrol(self, session: Session) -> None:
        """Between cells nothing of a session may burn CPU: not the holder (a cell forged its
        result and kept running), not the sleeping snapshot (code a cell registered to run at
        fork), not a process started since the last round. Repeats while the session lives."""
        if session.phase == "closed":
            return
        holder, snapshot = session.holder, session.snapshot
        mark = (holder.pid if holder else None, session.cells_started, session.phase)
        try:
            cpu = cpu_seconds(holder.pid) if holder else 0.0
        except OSError:
            cpu = 0.0
        if session.phase == "idle" and holder is not None and session.patrol_mark == mark \
                and cpu - session.patrol_cpu > IDLE_CPU_S:
            session.note += ("[sandbox] the previous cell kept running after it returned; "
                             "it was stopped and the state rolled back\n")
            session.phase = "stopping"
            session.forget = True
            holder.kill()
        if snapshot is not None:
            with contextlib.suppress(OSError):
                if cpu_seconds(snapshot.pid) > IDLE_CPU_S:  # a sleeping fork: ~0 CPU
                    snapshot.kill()
                    snapshot.close()
                    session.snapshot = None
                    session.snapshot_covers = None
                    session.note += ("[sandbox] code run at fork kept the saved state busy; it "
                                     "was dropped, so a failing cell now resets the session\n")
        if session.phase == "idle" and session.snapshot_covers is None:
            now = sweep.last_pid()
            keep = [proc.pid for proc in (session.holder, session.snapshot) if proc is not None]
            if session.patrol_pid >= 0 and not sweep.window_explained(
                    session.patrol_pid, now, set(self.known_pids)):
                sweep.kill_strays(session.owner, keep, session.patrol_pid)
            session.patrol_pid = now
        else:
            session.patrol_pid = -1  # a snapshot may be on its way: sweep no window this round
        session.patrol_mark, session.patrol_cpu = mark, cpu
        self.timers.at(time.monotonic() + IDLE_CHECK_S, lambda: self._patrol(session), session)

    def _replay_failed(self, session: Session) -> None:
        """A replayed cell behaved differently this time: start over with empty state."""
        session.replaying.clear()
        session.note += "[sandbox] the session's state could not be restored and was reset\n"
        self._respawn(session)

    def _on_holder_exit(self, session: Session, pid: int) -> None:
        promoting = session.promoting
        if promoting is not None and promoting.pid == pid:  # the snapshot died on waking
            self.exits.pop(pid, None)
            self.by_holder.pop(pid, None)
            promoting.close()
            session.promoting = None
            self._respawn(session)
            return
        if session.holder is None or session.holder.pid != pid:
            return
        self._on_channel(session)  # a result sent just before the exit still counts
        if session.holder is None or session.holder.pid != pid:
            return
        status_word, cpu = self.exits.pop(pid, (0, 0.0))
        holder = session.holder
        self.by_holder.pop(pid, None)
        holder.close()
        session.holder = None
        cell = session.cell
        if cell is not None:
            status, note = self._classify_exit(cell, status_word, cpu)
            self._finish_cell(session, status, note)
            if cell.replay:
                self._replay_failed(session)
                return
        if session.phase != "closed":
            self._promote(session)

    def _classify_exit(self, cell: Cell, status_word: int, cpu: float) -> tuple[str, str]:
        cpu_used = cpu - cell.cpu_start
        if cell.kill_reason == "cpu" or (os.WIFSIGNALED(status_word) and os.WTERMSIG(
                status_word) in (signal.SIGKILL, signal.SIGXCPU) and cpu_used >= cell.cpu_limit):
            return "timeout", (f"\n[sandbox] TimeoutError: the cell used more than its "
                               f"{cell.cpu_limit:g} s CPU limit; state rolled back\n")
        if cell.kill_reason == "protocol":
            return "crashed", cell.fault
        if cell.kill_reason == "disk":
            return "error", "\n[sandbox] the cell was stopped; state rolled back\n"
        if cell.kill_reason == "wall":
            return "timeout", (f"\n[sandbox] TimeoutError: the cell ran past its "
                               f"{cell.wall_limit:g} s wall-clock limit; state rolled back\n")
        if os.WIFEXITED(status_word):
            code = os.WEXITSTATUS(status_word)
            if code == CHANNEL_LOST:
                return "crashed", ("\n[sandbox] the cell closed the sandbox's file descriptors; "
                                   "state rolled back\n")
            if code == BOOT_FAILED:
                return "crashed", ("\n[sandbox] the cell broke the sandbox's own code; "
                                   "state rolled back\n")
            return "exited", f"\n[sandbox] the cell exited with code {code}; state rolled back\n"
        if os.WIFSIGNALED(status_word):
            name = signal.Signals(os.WTERMSIG(status_word)).name
            return "crashed", f"\n[sandbox] the cell was killed by {name}; state rolled back\n"
        return "crashed", "\n[sandbox] the cell's process vanished; state rolled back\n"

    def _finish_cell(self, session: Session, status: str, note: str) -> None:
        cell = session.cell
        if cell is None:
            return
        session.cell = None
        self._sweep_after(session, cell)
        if cell.kill_reason == "disk" or self._scratch_over(session):
            files.empty(session.scratch)
            session.note += (f"[sandbox] OSError: the cell wrote more than its scratch directory "
                             f"may hold ({self.config.max_scratch_mb} MB, "
                             f"{self.config.max_scratch_files} files); every file in it was "
                             "deleted\n")
        elapsed = time.monotonic() - cell.started
        cap = self.config.max_output_bytes
        stdout, out_cut = outbuf.read_stream(session.out_mem, 0, cap)  # type: ignore[arg-type]
        stderr, err_cut = outbuf.read_stream(session.out_mem, 1, cap)  # type: ignore[arg-type]
        digest = hash((stdout, stderr))
        if cell.replay:
            if digest != cell.output and status == "ok":
                session.note += ("[sandbox] a cell replayed to restore the state printed "
                                 "something else than the first time (unseeded randomness or "
                                 "the clock): the restored state may differ from what its "
                                 "output showed\n")
            return
        cell.output = digest
        if status == "exited" and not note:
            note = "[sandbox] the cell called sys.exit; state rolled back\n"
        if status in _ROLLBACK and session.snapshot is None:
            note += "[sandbox] no snapshot to roll back to: the session restarts empty\n"
        note, session.note = note + session.note, ""
        if note:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + note.lstrip("\n")
        result = {"status": status, "stdout": stdout, "stderr": stderr,
                  "elapsed_s": round(elapsed, 6), "truncated": out_cut or err_cut}
        self._reply(cell.request_id, ok=True, result=result)

    def _sweep_after(self, session: Session, cell: Cell) -> None:
        """Kill what the cell left running; skipped when no unknown pid was allocated since."""
        if sweep.window_explained(cell.since_pid, sweep.last_pid(), set(self.known_pids)):
            return
        keep = [proc.pid for proc in (session.holder, session.snapshot) if proc is not None]
        sweep.kill_strays(session.owner, keep, cell.since_pid)

    def _promote(self, session: Session) -> None:
        """Wake the snapshot: it becomes the holder with the state from before the cell."""
        snapshot = session.snapshot
        session.snapshot = None
        session.snapshot_covers = None
        if snapshot is None:
            self._respawn(session)
            return
        session.phase = "promoting"
        session.muted = False
        session.messages = 0
        self._restore_files(session)
        session.promoting = snapshot
        self.by_holder[snapshot.pid] = session
        snapshot.kill(signal.SIGUSR1)
        self.timers.at(time.monotonic() + PROMOTE_TIMEOUT_S,
                       lambda: self._promote_timeout(session, snapshot), session)

    def _restore_files(self, session: Session) -> None:
        """Put the scratch files back as they were when the snapshot was taken."""
        saved = session.scratch + ".saved"
        if not session.files_saved:
            session.note += (f"[sandbox] files in the scratch directory were not rolled back "
                             f"(over {files.SAVE_MAX_BYTES >> 20} MB or {files.SAVE_MAX_FILES} "
                             "files when the state was saved)\n")
            return
        try:
            if os.path.isdir(saved):
                files.restore(saved, session.scratch, session.uid)
            else:
                files.empty(session.scratch)
        except OSError as exc:
            session.note += f"[sandbox] files in the scratch directory were not rolled back " \
                            f"({exc.strerror or exc})\n"

    def _promote_timeout(self, session: Session, snapshot: Proc) -> None:
        if session.promoting is snapshot:
            snapshot.kill()
            snapshot.close()
            self.by_holder.pop(snapshot.pid, None)
            session.promoting = None
            self._respawn(session)

    def _respawn(self, session: Session) -> None:
        """No snapshot to fall back on: start a fresh holder (the session's state is lost)."""
        sweep.kill_strays(session.owner, ())
        files.empty(session.scratch)  # its files go with it
        shutil.rmtree(session.scratch + ".saved", ignore_errors=True)
        session.files_saved = True
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        pid = self._fork_holder(session.scratch, session.uid, theirs.fileno(), session.out_fd)
        theirs.close()
        with contextlib.suppress(KeyError, ValueError):
            self.selector.unregister(session.chan)
        session.chan.close()
        session.chan = mine
        self.selector.register(mine, selectors.EVENT_READ,
                               (lambda: self._on_channel(session), session))
        session.muted = False
        session.messages = 0
        if session.uid is None:
            session.owner = sweep.pgid_owner(pid)
        session.holder = Proc.open(pid)
        self.by_holder[pid] = session
        session.snapshot_covers = None
        session.log.clear()
        session.forget = False
        session.phase = "rebooting"
        session.open_request = None



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
