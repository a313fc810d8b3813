"""Traces: JSONL, one event per line, flushed as it happens so a crash loses at most one event.

The events of a problem are enough to replay it in the replay engine: each engine segment is
recorded with its seed and exact text.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from aimo_infer.errors import DataError


class TraceWriter:
    """Appends events to a JSONL file; each write is flushed to the OS before returning."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
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
    lines = Path(path).read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            if number >= len(lines) - 1:  # the last, unterminated line: torn by a crash
                return
            raise DataError(f"{path}:{number}: not a JSON event ({exc})") from exc

