"""Sandbox limits and layout: one plain dataclass handed from the pool to the manager."""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field, fields


def _default_scratch_root() -> str:
    return os.path.join(tempfile.gettempdir(), "aimo-sandbox")


@dataclass(frozen=True)
class SandboxConfig:
    """Per-call and per-session limits; ``cpu_time_s`` is what ``Session.run(timeout=)`` overrides."""

    cpu_time_s: float = 2.0  # CPU seconds per cell
    wall_time_s: float = 10.0  # wall-clock seconds per cell (streams share few cores)
    memory_mb: int = 1024  # address space a session may add on top of its warm imports
    max_processes: int = 32  # processes and threads per session (holds under a separate uid)
    max_open_files: int = 256
    max_file_mb: int = 64  # largest file a cell may write in its scratch directory
    max_scratch_mb: int = 256  # all files of a session's scratch directory together
    max_scratch_files: int = 10_000  # files and directories in it
    max_output_bytes: int = 16_000  # per stream; beyond it the caller sees head + marker + tail
    scratch_root: str = field(default_factory=_default_scratch_root)
    preload: tuple[str, ...] = ("math", "numpy", "sympy")  # imported once, shared by every session
    uid_base: int = 61_000  # first uid handed to sessions when running as root
    uid_count: int = 4_000
    separate_uid: bool = True  # run each session as its own uid when root
    seccomp: bool = True
    landlock: bool = True
    # Snapshots are forked once a session has been idle this long (the model is generating).
    # Cells that arrive back to back run without one; if such a cell hits a limit, the last
    # snapshot is woken and the cells since are replayed, at most this many / this much CPU.
    # max_replay_cells=0 forks a snapshot before every cell (no replay, slower when busy).
    snapshot_idle_ms: float = 25.0
    max_replay_cells: int = 16
    max_replay_cpu_s: float = 0.25

    def to_json(self) -> dict[str, object]:
        data = asdict(self)
        data["preload"] = list(self.preload)
        return data

    @classmethod
    def from_json(cls, data: dict[str, object]) -> SandboxConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown sandbox config keys: {sorted(unknown)}")
        values = dict(data)
        if "preload" in values:
            values["preload"] = tuple(values["preload"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]

    def validate(self) -> None:
        """Raise ValueError on limits that cannot work."""
        if self.cpu_time_s <= 0 or self.wall_time_s <= 0:
            raise ValueError("cpu_time_s and wall_time_s must be positive")
        if self.memory_mb < 16:
            raise ValueError("memory_mb must be at least 16")
        if self.max_processes < 4:
            raise ValueError("max_processes must be at least 4 (holder, snapshot, spare)")
        if self.max_output_bytes < 64:
            raise ValueError("max_output_bytes must be at least 64")
        if self.max_open_files < 16 or self.max_file_mb < 1:
            raise ValueError("max_open_files must be >= 16 and max_file_mb >= 1")
        if self.max_scratch_mb < self.max_file_mb or self.max_scratch_files < 1:
            raise ValueError("max_scratch_mb must be at least max_file_mb, max_scratch_files "
                             "at least 1")
