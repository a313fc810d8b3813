"""Traces: JSONL, one event per line, flushed as it happens so a crash loses at most one event.

The events of a problem are enough to replay it in the replay engine: each engine segment is
recorded with its seed and exact text.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

from aimo_infer.errors import DataError

_TAIL_CHUNK = 1 << 16


def repair_torn_tail(path: str | Path) -> None:
    """Make an append-only JSONL file end on a line boundary before more is appended.

    A process killed mid-write leaves an unterminated last line: a whole JSON object gets its
    newline (nothing is lost), a torn one is cut off (it was never complete). Without this the
    next line would be glued onto it and the file would no longer parse. Only the tail is read.
    """
    try:
        fh = open(path, "r+b")  # noqa: SIM115
    except FileNotFoundError:
        return
    with fh:
        end = fh.seek(0, os.SEEK_END)
        if end == 0:
            return
        fh.seek(end - 1)
        if fh.read(1) == b"\n":
            return
        start, pos = 0, end
        while pos > 0:
            step = min(_TAIL_CHUNK, pos)
            pos -= step
            fh.seek(pos)
            newline = fh.read(step).rfind(b"\n")
            if newline >= 0:
                start = pos + newline + 1
                break
        fh.seek(start)
        if _is_object(fh.read()):
            fh.write(b"\n")
        else:
            fh.truncate(start)


def _is_object(line: bytes | str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError, UnicodeDecodeError
        return False


def read_jsonl_tolerant(path: str | Path, what: str) -> Iterator[tuple[int, Any]]:
    """(line number, value) of each line of an append-only JSONL file.

    An unterminated last line that is not a whole JSON object (torn by a kill mid-write, see
    ``repair_torn_tail``) is skipped; any other bad line raises ``DataError`` naming the file,
    the line and ``what`` was expected there.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason})") from exc
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if number == len(lines) and not _is_object(line):  # unterminated: torn by a crash
            return
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not {what} ({exc.msg})") from exc
        yield number, value


class TraceWriter:
    """Appends events to a JSONL file; each write is flushed to the OS before returning.
    A torn last line left by a killed writer is repaired first."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        repair_torn_tail(self.path)
        self._fh: IO[str] | None = open(self.path, "a", encoding="utf-8")  # noqa: SIM115

    def write(self, event: str, **fields: Any) -> None:
        if self._fh is None:
            raise ValueError(f"trace {self.path} is closed")
        line = json.dumps({"event": event, "t": time.time(), **fields}, ensure_ascii=False,
                          default=str)
        self._fh.write(line + "\n")
        self._fh.flush()

    def sync(self) -> None:
        """Force the file to disk (for the end of a problem; flush already survives kill -9)."""
        if self._fh is not None:
            os.fsync(self._fh.fileno())

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> TraceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_trace(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events of a trace; a torn last line (a crash mid-write) is skipped, others must parse."""
    for number, event in read_jsonl_tolerant(path, "a JSON event"):
        if not isinstance(event, dict):
            raise DataError(f"{path}:{number}: not a JSON event (got {type(event).__name__})")
        yield event


def latest_attempts(events: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The events of each problem's last attempt: a problem started again (a dry run resumed
    after a kill) supersedes the events of its earlier attempts, which are dropped so that a
    replay reproduces what ran last. Events without a problem id are kept."""
    events = list(events)
    last_start: dict[object, int] = {}
    for index, event in enumerate(events):
        if event.get("event") == "problem_start":
            last_start[event.get("problem_id")] = index
    return [event for index, event in enumerate(events)
            if "problem_id" not in event or index >= last_start.get(event["problem_id"], -1)]
