"""Deterministic test doubles for unit tests (never the only proof that something works)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from aimo_infer.backends.base import Engine, GenerationRequest, StreamDelta
from sandbox.api import ExecResult


@dataclass
class ScriptedSession:
    runner: ScriptedRunner
    closed: bool = False

    async def run(self, code: str, timeout: float | None = None) -> ExecResult:
        self.runner.calls.append(code)
        return self.runner.results.get(code.strip(), ExecResult("ok", "", "", 0.001))

    async def close(self) -> None:
        self.closed = True


@dataclass
class ScriptedRunner:
    """Returns canned results per code string; records every call."""

    results: dict[str, ExecResult] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    sessions: list[ScriptedSession] = field(default_factory=list)

    async def open_session(self) -> ScriptedSession:
        session = ScriptedSession(self)
        self.sessions.append(session)
        return session

    async def close(self) -> None:
        pass


def request(rid: str, prompt: str = "Solve it.", **kw: Any) -> GenerationRequest:
    """A text-prompt request with defaults, for adapter tests."""
    return GenerationRequest(rid, prompt=prompt, **kw)


async def collect(engine: Engine, req: GenerationRequest) -> list[StreamDelta]:
    """Every delta of one request."""
    return [d async for d in engine.generate(req)]


def text_of(deltas: list[StreamDelta]) -> str:
    return "".join(d.text for d in deltas)


def processes_of_uids(first: int, count: int) -> list[int]:
    """Pids of live processes owned by uids ``first`` .. ``first + count - 1`` (sandbox sessions)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                uid = os.stat(f"/proc/{entry}").st_uid
            except OSError:
                continue
            if first <= uid < first + count:
                found.append(int(entry))
    return found
