"""Soak: 12 concurrent sessions run mixed code (timeouts and crashes included) for 60 s; no
result may be lost or wrong, and closing the pool must leave nothing behind."""

from __future__ import annotations

import asyncio
import os
import random
import time

import pytest

from sandbox import SandboxConfig, SandboxPool
from tests.fakes import processes_of_uids

UID_BASE = 64_700
CONFIG = SandboxConfig(cpu_time_s=1.0, wall_time_s=4.0, uid_base=UID_BASE, uid_count=20)
SECONDS = 60.0
SESSIONS = 12


async def stream(pool: SandboxPool, seed: int, stop: float) -> dict[str, int]:
    """One solution stream: keeps a counter in the session and checks it after every cell."""
    rng = random.Random(seed)
    session = await pool.open_session()
    await session.run("count = 0")
    count = 0
    seen: dict[str, int] = {}
    while time.monotonic() < stop:
        kind = rng.choice(["add", "add", "add", "sympy", "error", "timeout", "exit", "fork",
                           "print"])
        if kind == "add":
            result = await session.run("count += 1\nprint(count)")
            count += 1
            assert (result.status, result.stdout) == ("ok", f"{count}\n"), result
        elif kind == "sympy":
            result = await session.run("import sympy\nprint(sympy.factorint(2**32 + 1))")
            assert result.stdout == "{641: 1, 6700417: 1}\n", result
        elif kind == "error":
            result = await session.run("count += 1000\nraise ValueError('boom')")
            count += 1000  # an exception keeps what ran before it, like a notebook
            assert result.status == "error" and "ValueError: boom" in result.stderr, result
        elif kind == "timeout":
            result = await session.run("count = -1\nwhile True: pass", timeout=0.2)
            assert result.status == "timeout", result
        elif kind == "exit":
            result = await session.run("count = -1\nimport os\nos._exit(0)")
            assert result.status == "exited", result
        elif kind == "fork":
            result = await session.run("import os, time\nif os.fork() == 0:\n"
                                       "    time.sleep(100)\nprint('forked')")
            assert result.stdout == "forked\n", result
        else:
            result = await session.run("print('x' * 100000)")
            assert result.truncated and result.status == "ok", result
        seen[kind] = seen.get(kind, 0) + 1
    final = await session.run("print(count)")
    assert final.stdout == f"{count}\n", (final, count)
    await session.close()
    return seen


def session_uid_processes() -> list[int]:
    return processes_of_uids(UID_BASE, 20)


@pytest.mark.slow
def test_twelve_sessions_for_a_minute() -> None:
    async def go() -> tuple[list[dict[str, int]], int | None]:
        pool = SandboxPool(CONFIG)
        await pool.start()
        stop = time.monotonic() + SECONDS
        seen = await asyncio.gather(*(stream(pool, seed, stop) for seed in range(SESSIONS)))
        manager = pool.manager_pid
        await pool.close()
        return list(seen), manager

    seen, manager = asyncio.run(go())
    totals = {kind: sum(s.get(kind, 0) for s in seen) for kind in seen[0]}
    assert totals.get("timeout", 0) > 0 and totals.get("add", 0) > 0
    assert manager is not None and not os.path.exists(f"/proc/{manager}")
    if os.geteuid() == 0:
        assert session_uid_processes() == []
    assert not [name for name in os.listdir(CONFIG.scratch_root)
                if name.startswith(f"s{manager}-")]
