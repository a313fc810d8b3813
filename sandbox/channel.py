"""The channel protocol between a session's sandboxed processes and the manager.

Every byte a holder (or a cell running inside it) sends is hostile: a datagram is checked for
size and nesting before it is parsed, and each field for type and range before the manager
uses it. Anything else is a ``BadMessage``, which ends the offending cell, never the manager.
"""

from __future__ import annotations

import json
import socket
import struct
from dataclasses import dataclass

MAX_MESSAGE_BYTES = 4096  # the largest a holder sends is its boot report (a few hundred bytes)
MAX_BRACKETS = 4  # the boot report nests one object in another; nothing nests deeper
MAX_MESSAGES_PER_WAKEUP = 16  # one read burst; the manager then serves everyone else
MAX_MESSAGES_PER_CELL = 32  # a cell's holder sends one result (and a snapshot reply or two)
MAX_REPORT_ENTRIES = 16
MAX_REPORT_TEXT = 512
EXIT_CODE_RANGE = (-(2**31), 2**31 - 1)
CELL_STATUSES = frozenset({"ok", "error", "exited", "memory", "crashed"})
CREDS = struct.Struct("3i")
ANCILLARY_SPACE = socket.CMSG_SPACE(CREDS.size)


class BadMessage(ValueError):
    """A sandboxed process sent something the protocol does not allow."""


@dataclass(frozen=True)
class Boot:
    report: dict[str, str]


@dataclass(frozen=True)
class SnapshotTaken:
    pid: int  # 0: the holder could not fork one


@dataclass(frozen=True)
class CellResult:
    status: str
    exit_code: int | None
    shed: bool


@dataclass(frozen=True)
class Ready:
    pass


Message = Boot | SnapshotTaken | CellResult | Ready


def sender_pid(ancdata: list[tuple[int, int, bytes]]) -> int | None:
    """The pid the kernel vouches for (SCM_CREDENTIALS), or None when absent."""
    for level, kind, payload in ancdata:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS \
                and len(payload) >= CREDS.size:
            return CREDS.unpack(payload[:CREDS.size])[0]
    return None


def parse(data: bytes, pid_limit: int) -> Message:
    """Check and decode one datagram; raises ``BadMessage`` with a one-line reason."""
    if not data:
        raise BadMessage("an empty message")
    if len(data) > MAX_MESSAGE_BYTES:
        raise BadMessage(f"a message over {MAX_MESSAGE_BYTES} bytes")
    if data.count(b"[") + data.count(b"{") > MAX_BRACKETS:
        raise BadMessage("a message nested too deeply")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        raise BadMessage("a message that is not JSON") from None
    if not isinstance(raw, dict):
        raise BadMessage("a message that is not a JSON object")
    op = raw.get("op")
    if op == "result":
        _keys(raw, {"op", "status", "exit_code", "shed"})
        status = raw.get("status")
        if not isinstance(status, str) or status not in CELL_STATUSES:
            raise BadMessage("a result with an unknown status")
        exit_code = raw.get("exit_code")
        if exit_code is not None and not (_is_int(exit_code)
                                          and EXIT_CODE_RANGE[0] <= exit_code
                                          <= EXIT_CODE_RANGE[1]):
            raise BadMessage("a result with a bad exit code")
        shed = raw.get("shed", False)
        if not isinstance(shed, bool):
            raise BadMessage("a result with a bad 'shed' flag")
        return CellResult(status, exit_code, shed)
    if op == "snapshot":
        _keys(raw, {"op", "pid"})
        pid = raw.get("pid")
        if not _is_int(pid) or not 0 <= pid < pid_limit or pid == 1:
            raise BadMessage("a snapshot with a pid out of range")
        return SnapshotTaken(pid)
    if op == "ready":
        _keys(raw, {"op"})
        return Ready()
    if op == "boot":
        _keys(raw, {"op", "report"})
        return Boot(_report(raw.get("report")))
    raise BadMessage("a message with an unknown op")


def _is_int(value: object) -> bool:
    return type(value) is int


def _keys(raw: dict[str, object], allowed: set[str]) -> None:
    if "op" not in raw or not set(raw) <= allowed:
        raise BadMessage("a message with unexpected fields")


def _report(value: object) -> dict[str, str]:
    if not isinstance(value, dict) or len(value) > MAX_REPORT_ENTRIES:
        raise BadMessage("a boot report that is not a small object")
    for key, text in value.items():
        if not isinstance(text, str) or len(key) > 64 or len(text) > MAX_REPORT_TEXT:
            raise BadMessage("a boot report with a bad entry")
    return dict(value)
