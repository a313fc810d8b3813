"""The manager's side of the session channels: read, check, and act on what holders send.

Reads are capped per wakeup and per cell (a flood stops the cell, it cannot starve the loop);
each datagram goes through ``channel.parse``; a breach stops the holder and rolls back. Only
messages from the pid the kernel vouches for are believed.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from collections import deque

from sandbox import channel
from sandbox.channel import BadMessage, Boot, CellResult, Ready, SnapshotTaken
from sandbox.procs import Proc
from sandbox.state import Session


class Inbox:
    """Part of ``sandbox.manager.Manager`` (a mixin; ``self`` is the manager): the session channels."""

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
        if os.path.lexists(session.scratch + ".saved"):
            shutil.rmtree(session.scratch + ".saved", ignore_errors=True)
        with contextlib.suppress(OSError):  # no copy: the scratch directory was empty
            os.rename(session.scratch + ".next", session.scratch + ".saved")
        session.files_saved = session.files_pending

    def _send_session(self, session: Session, message: bytes) -> bool:
        try:
            session.chan.send(message, socket.MSG_DONTWAIT)
        except OSError:
            return False
        return True
