"""A cell's life in the manager: start it, end it, and roll back when it hits a limit.

Rollback wakes the snapshot (with the scratch files saved with it) and replays the cells the
snapshot had not seen; without a snapshot the session restarts empty. The caller is told what
could not be restored.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import socket
import time

from sandbox import files, outbuf, sweep
from sandbox.procs import Proc, cpu_seconds
from sandbox.state import (
    BOOT_FAILED,
    CHANNEL_LOST,
    MAX_CODE_BYTES,
    PROMOTE_TIMEOUT_S,
    ROLLBACK,
    SCRATCH_CHECK_S,
    Cell,
    Session,
)


class Lifecycle:
    """Part of ``sandbox.manager.Manager`` (a mixin; ``self`` is the manager): cells, snapshots, rollback and replay."""

    def _request_snapshot(self, session: Session) -> None:
        """Fork a snapshot of the holder now (it includes every cell logged so far)."""
        if session.snapshot_covers is not None:
            return
        # The holder is idle: its files now are those the snapshot will go with.
        session.files_pending = files.save(session.scratch, session.scratch + ".next")
        if self._send_session(session, b"S"):
            session.snapshot_covers = len(session.log)
            session.snapshot_asked = time.monotonic()

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

    def _kill_cell(self, session: Session, cell: Cell, reason: str) -> None:
        if session.cell is not cell or session.holder is None:
            return
        cell.kill_reason = reason
        session.holder.kill()  # the exit arrives through SIGCHLD and finishes the cell

    def _cell_returned(self, session: Session, status: str, note: str) -> None:
        """The holder reported the end of a cell; roll back if the cell hit a limit."""
        cell = session.cell
        assert cell is not None and session.holder is not None
        if status in ROLLBACK:
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
        if status in ROLLBACK and session.snapshot is None:
            note += "[sandbox] no snapshot to roll back to: the session restarts empty\n"
        note, session.note = note + session.note, ""
        if note:
            stderr += ("" if not stderr or stderr.endswith("\n") else "\n") + note.lstrip("\n")
        result = {"status": status, "stdout": stdout, "stderr": stderr,
                  "elapsed_s": round(elapsed, 6), "truncated": out_cut or err_cut}
        self._reply(cell.request_id, ok=True, result=result)

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
