"""The sandbox contract: what a caller (the solve loop, the CLI, other tools) relies on.

One ``Session`` per solution stream keeps state between cells like a notebook. A cell that hits
a limit reports it in ``status``; the session's state stays as it was before that cell.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal, Protocol

ExecStatus = Literal["ok", "error", "timeout", "memory", "crashed", "exited"]
"""ok: ran to the end; error: raised a Python exception (traceback in stderr); timeout: CPU or
wall-clock limit; memory: memory limit; crashed: killed by a signal (segfault...); exited: the
cell called sys.exit/os._exit."""


@dataclass(frozen=True)
class ExecResult:
    """The outcome of one cell. ``truncated`` says the output was cut at the source."""

    status: ExecStatus
    stdout: str
    stderr: str
    elapsed_s: float
    truncated: bool = False

    def to_json(self) -> dict[str, object]:
        return asdict(self)


class Session(Protocol):
    """A stateful execution context for one solution stream."""

    async def run(self, code: str, timeout: float | None = None) -> ExecResult: ...

    async def close(self) -> None: ...


class CodeRunner(Protocol):
    """Hands out sessions; the solve loop depends on this, not on the sandbox internals."""

    async def open_session(self) -> Session: ...

    async def close(self) -> None: ...
