"""Process supervision: limits the kernel cannot enforce alone, checked from outside.

CPU time of a running cell, the session's scratch quota, strays left after a cell, and a patrol
of idle sessions so that nothing of a session burns CPU between cells.
"""

from __future__ import annotations

import contextlib
import time

from sandbox import sweep
from sandbox.procs import cpu_seconds
from sandbox.state import (
    IDLE_CHECK_S,
    IDLE_CPU_S,
    SCRATCH_CHECK_S,
    SNAPSHOT_ANSWER_S,
    Cell,
    Session,
)


class Supervision:
    """Part of ``sandbox.manager.Manager`` (a mixin; ``self`` is the manager): CPU, scratch quota, strays and the idle patrol."""

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
        if session.phase == "idle" and session.snapshot_covers is not None \
                and time.monotonic() - session.snapshot_asked > SNAPSHOT_ANSWER_S:
            session.snapshot_covers = None  # the request was lost (a cell read it): ask again
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

    def _sweep_after(self, session: Session, cell: Cell) -> None:
        """Kill what the cell left running; skipped when no unknown pid was allocated since."""
        if sweep.window_explained(cell.since_pid, sweep.last_pid(), set(self.known_pids)):
            return
        keep = [proc.pid for proc in (session.holder, session.snapshot) if proc is not None]
        sweep.kill_strays(session.owner, keep, cell.since_pid)
