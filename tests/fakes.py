"""Deterministic test doubles for unit tests (never the only proof that something works)."""

from __future__ import annotations

from dataclasses import dataclass, field

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
