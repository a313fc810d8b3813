"""The sandbox as the solve loop and other tools use it: sessions, limits, rollback, CLI."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from sandbox import SandboxConfig, SandboxError, SandboxPool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = SandboxConfig(cpu_time_s=1.0, wall_time_s=4.0, max_output_bytes=200,
                       uid_base=64_400, uid_count=100)


@pytest.fixture(scope="module")
def pool() -> Iterator[SandboxPool]:
    pool = SandboxPool(CONFIG)
    pool.start_sync()
    yield pool
    pool.close_sync()


def test_state_persists_between_cells(pool: SandboxPool) -> None:
    async def go() -> list[str]:
        session = await pool.open_session()
        await session.run("import sympy as sp\nx = sp.symbols('x')\nn = 2")
        first = await session.run("n += 1\nprint(sp.expand((x + 1)**n))")
        second = await session.run("print(n)")
        await session.close()
        return [first.stdout, second.stdout]

    assert asyncio.run(go()) == ["x**3 + 3*x**2 + 3*x + 1\n", "3\n"]


def test_sessions_are_isolated(pool: SandboxPool) -> None:
    async def go() -> tuple[str, str, str]:
        a, b = await pool.open_session(), await pool.open_session()
        await a.run("secret = 42\nopen('mine.txt', 'w').write('a')\nimport os\nhome = os.getcwd()")
        where = (await a.run("print(home)")).stdout.strip()
        seen = await b.run("print('secret' in globals())")
        peek = await b.run(f"print(open({where + '/mine.txt'!r}).read())")
        await a.close()
        await b.close()
        return seen.stdout, peek.status, peek.stderr

    seen, peek_status, peek_err = asyncio.run(go())
    assert seen == "False\n"
    if os.geteuid() == 0:  # separate uids: another session's scratch is unreadable
        assert peek_status == "error" and "PermissionError" in peek_err


def test_limits_report_status_and_roll_back(pool: SandboxPool) -> None:
    async def go() -> list[tuple[str, str]]:
        session = await pool.open_session()
        await session.run("x = 1")
        out = []
        for cell in ("x = 2\nwhile True: pass", "x = 3\nbytearray(10**11)",
                     "x = 4\nimport os\nos._exit(1)", "x = 5\nimport ctypes\nctypes.string_at(0)",
                     "x = 6\nraise SystemExit", "x = 7\n1/0"):
            result = await session.run(cell)
            after = await session.run("print(x)")
            out.append((result.status, after.stdout))
        await session.close()
        return out

    assert asyncio.run(go()) == [("timeout", "1\n"), ("memory", "1\n"), ("exited", "1\n"),
                                 ("crashed", "1\n"), ("exited", "1\n"), ("error", "7\n")]


def test_timeout_argument_overrides_cpu_limit(pool: SandboxPool) -> None:
    code = ("import time\nt = time.process_time()\n"
            "while time.process_time() - t < 0.3: pass\nprint('finished')")

    async def go() -> tuple[str, str]:
        session = await pool.open_session()
        short = await session.run(code, timeout=0.1)
        default = await session.run(code)
        await session.close()
        return short.status, default.stdout

    assert asyncio.run(go()) == ("timeout", "finished\n")


@pytest.mark.parametrize("max_replay_cells", [0, 16])
def test_rollback_after_back_to_back_cells(max_replay_cells: int) -> None:
    """With lagging snapshots the cells since the last one are replayed; without, none are."""
    config = SandboxConfig(cpu_time_s=0.5, max_replay_cells=max_replay_cells,
                           uid_base=64_500 + 10 * max_replay_cells, uid_count=10)

    async def go() -> tuple[str, str]:
        async with SandboxPool(config) as pool:
            session = await pool.open_session()
            for i in range(25):
                await session.run(f"v{i} = {i}\nlast = {i}")
            failed = await session.run("last = -1\nwhile True: pass")
            after = await session.run("print(last, sum(globals()[f'v{i}'] for i in range(25)))")
            return failed.status, after.stdout

    assert asyncio.run(go()) == ("timeout", "24 300\n")


def test_output_is_capped_head_and_tail(pool: SandboxPool) -> None:
    async def go() -> tuple[str, bool]:
        session = await pool.open_session()
        result = await session.run("print('START' + 'x' * 5000 + 'END')")
        await session.close()
        return result.stdout, result.truncated

    stdout, truncated = asyncio.run(go())
    assert truncated
    assert stdout.startswith("START") and stdout.endswith("END\n")
    assert "bytes cut" in stdout and len(stdout) < 400


def test_output_printed_before_a_timeout_is_kept(pool: SandboxPool) -> None:
    async def go() -> tuple[str, str]:
        session = await pool.open_session()
        result = await session.run("print('progress 1')\nwhile True: pass")
        await session.close()
        return result.status, result.stdout

    assert asyncio.run(go()) == ("timeout", "progress 1\n")


def test_concurrent_sessions_each_get_their_own_results(pool: SandboxPool) -> None:
    async def one(i: int) -> list[str]:
        session = await pool.open_session()
        outs = [(await session.run(f"k = {i} * {j}\nprint(k)")).stdout for j in range(5)]
        await session.close()
        return outs

    async def go() -> list[list[str]]:
        return await asyncio.gather(*(one(i) for i in range(6)))

    assert asyncio.run(go()) == [[f"{i * j}\n" for j in range(5)] for i in range(6)]


def test_closed_session_refuses_work(pool: SandboxPool) -> None:
    async def go() -> None:
        session = await pool.open_session()
        await session.close()
        await session.run("1")

    with pytest.raises(SandboxError):
        asyncio.run(go())


def test_closing_the_pool_leaves_nothing_behind() -> None:
    config = SandboxConfig(uid_base=64_600, uid_count=10)

    async def go() -> tuple[int, list[str]]:
        pool = SandboxPool(config)
        session = await pool.open_session()
        await session.run("import os\nif os.fork() == 0:\n    import time\n    time.sleep(100)")
        await session.run("open('data.txt', 'w').write('x')\nimport os\nprint(os.getcwd())")
        scratch = [name for name in os.listdir(config.scratch_root)
                   if name.startswith(f"s{pool.manager_pid}-")]
        manager = pool.manager_pid
        await pool.close()
        assert manager is not None
        return manager, scratch

    manager, scratch = asyncio.run(go())
    assert scratch  # the session had a scratch directory while open
    assert not os.path.exists(f"/proc/{manager}")
    assert not [name for name in os.listdir(config.scratch_root)
                if name.startswith(f"s{manager}-")]
    if os.geteuid() == 0:
        owners = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                with contextlib.suppress(OSError):
                    owners.append(os.stat(f"/proc/{entry}").st_uid)
        assert not [uid for uid in owners if 64_600 <= uid < 64_610]


def cli(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox", *args], input=stdin,
                          capture_output=True, text=True, cwd=ROOT, timeout=120)


def test_cli_exec_prints_one_json_object() -> None:
    done = cli("exec", "--timeout", "1", stdin="print(6 * 7)\n")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["status"] == "ok" and result["stdout"] == "42\n"
    assert set(result) == {"status", "stdout", "stderr", "elapsed_s", "truncated"}


def test_cli_session_keeps_state(tmp_path: os.PathLike[str]) -> None:
    state = os.path.join(tmp_path, "session.json")
    first = cli("exec", "--session", state, stdin="total = 40")
    second = cli("exec", "--session", state, stdin="total += 2\nprint(total)")
    closed = cli("close", "--session", state)
    assert first.returncode == 0 and second.returncode == 0, first.stderr + second.stderr
    assert json.loads(second.stdout)["stdout"] == "42\n"
    assert closed.returncode == 0


def test_cli_rejects_bad_limits_with_one_line() -> None:
    done = cli("exec", "--memory-mb", "1", stdin="print(1)")
    assert done.returncode == 1
    assert done.stderr.startswith("error:") and done.stderr.count("\n") == 1


def test_cli_doctor_reports_protections() -> None:
    done = cli("doctor")
    report = json.loads(done.stdout)
    assert {"rlimits", "uid", "landlock", "seccomp", "imports"} <= set(report["protections"])
    # Only a kernel without Landlock or seccomp may fail it here; imports must always work.
    assert done.returncode == (1 if report["problems"] else 0), done.stderr
    assert all(" is off" in problem for problem in report["problems"]), report["problems"]
    if report["protections"]["seccomp"].startswith("on"):
        assert report["probes"]["run a program"] == "blocked"
