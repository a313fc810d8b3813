"""What the manager knows about each session and its running cell, and the limits it keeps.

Plain records shared by the manager's parts: the event loop (``manager``), the channel inbox
(``inbox``), the cell lifecycle (``lifecycle``) and process supervision (``supervise``).
"""

from __future__ import annotations

import socket
from collections import deque
from dataclasses import dataclass, field

from sandbox import sweep
from sandbox.procs import Proc

CHANNEL_LOST = 120
BOOT_FAILED = 121
MAX_CODE_BYTES = 1024 * 1024
PROMOTE_TIMEOUT_S = 10.0
SCRATCH_CHECK_S = 0.25  # how often a running cell's scratch directory is measured
IDLE_CHECK_S = 0.5  # how often an idle session's processes are checked for CPU use
IDLE_CPU_S = 0.2  # CPU a holder or a sleeping snapshot may use in that time
BOOT_TIMEOUT_S = 30.0
SNAPSHOT_ANSWER_S = 5.0  # an idle holder answers a snapshot request well within this
ROLLBACK = {"timeout", "memory", "crashed", "exited"}
PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1  # a holder dies with the manager, even in the middle of a cell


@dataclass
class Cell:
    """One cell the holder is running (or replaying)."""

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
    """One session: its processes, channel, scratch and the cells since its snapshot."""

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
    snapshot_asked: float = 0.0  # when the pending snapshot was asked for
    files_saved: bool = True  # the live snapshot's scratch files were saved (not too large)
    files_pending: bool = True  # the same for the snapshot asked for


