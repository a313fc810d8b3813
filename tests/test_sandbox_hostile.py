"""The hostile corpus: each case runs attack cells in a fresh session and asserts the safe outcome.

Attacks that would hurt this machine if containment failed (kill(-1), killing every pid, fork
bombs) run inside a throwaway PID namespace. The last test checks that the whole corpus left no
process and no file behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from sandbox import ExecResult, SandboxConfig, SandboxError, SandboxPool
from tests.fakes import processes_of_uids

SECRET = "hostile-corpus-secret-4f1c"
UID_BASE = 64_000
UID_COUNT = 200
CONFIG = SandboxConfig(cpu_time_s=1.0, wall_time_s=4.0, memory_mb=512, max_output_bytes=4000,
                       uid_base=UID_BASE, uid_count=UID_COUNT)


@dataclass
class Env:
    pool: SandboxPool
    canary: str  # a world-writable directory outside every scratch directory
    port: int
    listener: socket.socket


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    os.environ["HOSTILE_SECRET"] = SECRET  # must never reach a cell
    canary = f"/tmp/sandbox-canary-{os.getpid()}"
    os.makedirs(canary, exist_ok=True)
    os.chmod(canary, 0o777)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    pool = SandboxPool(CONFIG)
    pool.start_sync()
    yield Env(pool, canary, listener.getsockname()[1], listener)
    pool.close_sync()
    listener.close()
    shutil.rmtree(canary, ignore_errors=True)
    os.environ.pop("HOSTILE_SECRET", None)


def run_cells(env: Env, *cells: str, timeout: float | None = None) -> list[ExecResult]:
    """Run cells in order in one fresh session; placeholders name the test's resources."""
    values = {"canary": env.canary, "port": env.port, "manager": env.pool.manager_pid,
              "harness": os.getpid()}

    async def go() -> list[ExecResult]:
        session = await env.pool.open_session()
        try:
            return [await session.run(textwrap.dedent(cell).format(**values), timeout=timeout)
                    for cell in cells]
        finally:
            await session.close()

    return asyncio.run(go())


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def still_works(result: ExecResult) -> None:
    assert result.status == "ok", result
    assert result.stdout == "alive\n"


PROBE = "print('alive')"


@dataclass(frozen=True)
class Case:
    name: str
    cells: tuple[str, ...]
    check: Callable[[Env, list[ExecResult]], None]
    timeout: float | None = None


def status_is(*statuses: str) -> Callable[[Env, list[ExecResult]], None]:
    """First cell ends with one of ``statuses``; the session then still answers."""

    def check(_env: Env, results: list[ExecResult]) -> None:
        assert results[0].status in statuses, results[0]
        still_works(results[-1])

    return check


def rolled_back(*statuses: str) -> Callable[[Env, list[ExecResult]], None]:
    """Cell 0 sets x=1, cell 1 changes x then fails, cell 2 must still see x == 1."""

    def check(_env: Env, results: list[ExecResult]) -> None:
        assert results[1].status in statuses, results[1]
        assert results[2].stdout == "1\n", results[2]

    return check


def denied(_env: Env, results: list[ExecResult]) -> None:
    """The attack raised (PermissionError and friends) and printed no ESCAPED marker."""
    assert results[0].status == "error", results[0]
    assert "ESCAPED" not in results[0].stdout
    still_works(results[-1])


def no_canary(name: str) -> Callable[[Env, list[ExecResult]], None]:
    def check(env: Env, results: list[ExecResult]) -> None:
        assert "ESCAPED" not in results[0].stdout
        assert not os.path.exists(os.path.join(env.canary, name)), "wrote outside scratch"
        still_works(results[-1])

    return check


def children_dead(env: Env, results: list[ExecResult]) -> None:
    """The cell printed the pids it left running; all must be gone when the result arrives."""
    pids = [int(word) for word in results[0].stdout.split() if word.isdigit()]
    assert pids, results[0]
    assert not [pid for pid in pids if alive(pid)], "a stray process survived the cell"
    still_works(results[-1])


def secret_hidden(_env: Env, results: list[ExecResult]) -> None:
    assert SECRET not in results[0].stdout + results[0].stderr
    still_works(results[-1])


def no_connection(env: Env, results: list[ExecResult]) -> None:
    assert results[0].status == "error", results[0]
    with pytest.raises(BlockingIOError):
        env.listener.accept()
    still_works(results[-1])


def truncated(_env: Env, results: list[ExecResult]) -> None:
    first = results[0]
    assert first.truncated, first
    text = first.stdout + first.stderr
    assert len(text.encode()) < 3 * CONFIG.max_output_bytes
    assert "bytes cut" in text and text.rstrip().endswith("END")
    still_works(results[-1])


CASES = [
    # limits
    Case("busy loop", ("while True: pass", PROBE), status_is("timeout")),
    Case("C-level huge power", ("10**(10**9)", PROBE), status_is("timeout")),
    Case("C-level long sum", ("sum(range(4*10**9))", PROBE), status_is("timeout")),
    Case("sleep past wall clock", ("import time\ntime.sleep(60)", PROBE), status_is("timeout")),
    Case("timeout rolls back", ("x = 1", "x = 2\nwhile True: pass", "print(x)"),
         rolled_back("timeout")),
    Case("per-call timeout", ("import time\nt=time.process_time()\nwhile time.process_time()-t<0.6:"
                              " pass\nprint('done')", PROBE), status_is("timeout"), timeout=0.3),
    Case("bytearray bomb", ("b = bytearray(10**11)", PROBE), status_is("memory")),
    # Filling 512 MB costs CPU and, on a loaded machine, wall time: a generous time limit
    # makes the memory limit the one that is hit, every time.
    Case("list growth bomb", ("l = []\nwhile True: l.append(' ' * 10**7)", PROBE),
         status_is("memory", "crashed"), timeout=10.0),
    Case("numpy bomb", ("import numpy as np\na = np.ones(10**11)", PROBE), status_is("memory")),
    Case("memory rolls back", ("x = 1", "x = 2\nb = bytearray(10**11)", "print(x)"),
         rolled_back("memory")),
    Case("huge int printing works", ("print(len(str(10**5000)))\nprint('alive')",),
         lambda _e, r: r[0].stdout == "5001\nalive\n"),
    Case("deep recursion", ("def f(n): return f(n + 1)\nf(0)", PROBE), status_is("error")),
    Case("deep recursion, raised limit", ("import sys\nsys.setrecursionlimit(10**8)\n"
                                          "def f(n): return f(n + 1)\nf(0)", PROBE),
         status_is("crashed", "memory", "error", "timeout")),
    Case("stdout flood", ("import sys\nfor i in range(30000): print('spam', i)\nprint('END')",
                          PROBE), truncated),
    Case("stderr flood", ("import sys\nsys.stderr.write('e' * 10**7)\nsys.stderr.write('END')",
                          PROBE), truncated),
    Case("no output leaks into the next cell", ("print('leak', end='')\nwhile True: pass",
                                                PROBE), status_is("timeout")),
    # exits, crashes, signals
    Case("sys.exit", ("x = 1", "x = 2\nimport sys\nsys.exit(3)", "print(x)"),
         rolled_back("exited")),
    Case("os._exit", ("x = 1", "x = 2\nimport os\nos._exit(0)", "print(x)"),
         rolled_back("exited")),
    Case("segfault through ctypes", ("x = 1", "x = 2\nimport ctypes\nctypes.string_at(0)",
                                     "print(x)"), rolled_back("crashed")),
    Case("abort", ("import os\nos.abort()", PROBE), status_is("crashed")),
    Case("KeyboardInterrupt", ("raise KeyboardInterrupt", PROBE), status_is("error")),
    Case("input() does not hang", ("input()", PROBE), status_is("error")),
    Case("signal.alarm is disarmed after the cell",
         ("import signal\nsignal.alarm(1)", "import time\ntime.sleep(1.5)\nprint('alive')"),
         lambda _e, r: still_works(r[1])),
    Case("SIGALRM handler that raises", ("import signal\ndef h(*a): raise SystemExit(9)\n"
                                         "signal.signal(signal.SIGALRM, h)\nsignal.alarm(1)",
                                         "import time\ntime.sleep(1.5)\nprint('alive')"),
         lambda _e, r: still_works(r[1])),
    Case("kill the manager", ("import os, signal\nos.kill({manager}, signal.SIGKILL)\n"
                              "print('ESCAPED')", PROBE), denied),
    Case("kill the parent", ("import os\nos.kill(os.getppid(), 9)\nprint('ESCAPED')", PROBE),
         denied),
    Case("kill the harness", ("import os\nos.kill({harness}, 9)\nprint('ESCAPED')", PROBE),
         denied),
    Case("kill own process group", ("import os\nos.killpg(0, 9)\nprint('ESCAPED')", PROBE),
         denied),
    Case("signal self", ("import os, signal\nos.kill(os.getpid(), signal.SIGTERM)\n"
                         "print('ESCAPED')", PROBE), denied),
    # processes and programs
    Case("subprocess", ("import subprocess\nsubprocess.run(['true'])\nprint('ESCAPED')", PROBE),
         denied),
    Case("os.system", ("import os\nr = os.system('touch {canary}/system')\n"
                       "print('ESCAPED' if r == 0 else 'failed')", PROBE), no_canary("system")),
    Case("execv", ("import os\nos.execv('/bin/sh', ['sh', '-c', 'echo ESCAPED'])", PROBE),
         denied),
    Case("posix_spawn", ("import os\nos.posix_spawn('/bin/true', ['true'], {{}})\n"
                         "print('ESCAPED')", PROBE), denied),
    Case("setsid daemon", ("import os, time\npid = os.fork()\nif pid == 0:\n"
                           "    try: os.setsid()\n    except OSError: pass\n"
                           "    time.sleep(1000)\n    os._exit(0)\nprint(pid)", PROBE),
         children_dead),
    Case("double-fork daemon", ("import os, time\nr, w = os.pipe()\nif os.fork() == 0:\n"
                                "    g = os.fork()\n    if g == 0:\n        time.sleep(1000)\n"
                                "    os.write(w, str(g).encode())\n    os._exit(0)\n"
                                "print(int(os.read(r, 32)))", PROBE), children_dead),
    Case("busy child left running", ("import os\npid = os.fork()\nif pid == 0:\n"
                                     "    while True: pass\nprint(pid)", PROBE), children_dead),
    Case("endless thread", ("import threading\ndef spin():\n    while True: pass\n"
                            "threading.Thread(target=spin, daemon=True).start()\nx = 5",
                            "print(x)", PROBE),
         lambda _e, r: (r[0].status == "ok" and "threads were stopped" in r[0].stderr
                        and r[1].stdout == "5\n" and still_works(r[2]))),
    Case("thread sleeping forever", ("import threading, time\n"
                                     "threading.Thread(target=time.sleep, args=(1000,)).start()",
                                     PROBE), status_is("ok")),
    Case("ptrace the manager", ("import ctypes\nlibc = ctypes.CDLL(None)\n"
                                "print('ESCAPED' if libc.ptrace(16, {manager}, 0, 0) == 0 "
                                "else 'denied')", PROBE), status_is("ok")),
    Case("new user namespace", ("import ctypes\nlibc = ctypes.CDLL(None)\n"
                                "assert libc.unshare(0x10000000) != 0\nprint('denied')", PROBE),
         status_is("ok")),
    Case("become root", ("import os\nos.setuid(0)\nprint('ESCAPED')", PROBE), denied),
    Case("raise own limits", ("import resource\nresource.setrlimit(resource.RLIMIT_AS, "
                              "(-1, -1))\nprint('ESCAPED')", PROBE), denied),
    # network
    Case("TCP to a loopback listener", ("import socket\nsocket.create_connection(('127.0.0.1', "
                                        "{port}), timeout=1)\nprint('ESCAPED')", PROBE),
         no_connection),
    Case("IPv6 socket", ("import socket\nsocket.socket(socket.AF_INET6)\nprint('ESCAPED')",
                         PROBE), denied),
    Case("UDP send", ("import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
                      "s.sendto(b'x', ('127.0.0.1', {port}))\nprint('ESCAPED')", PROBE), denied),
    Case("raw packet socket", ("import socket\nsocket.socket(socket.AF_PACKET, socket.SOCK_RAW)\n"
                               "print('ESCAPED')", PROBE), denied),
    # environment and files
    Case("environment read", ("import os\nprint(dict(os.environ))", PROBE), secret_hidden),
    Case("/proc/*/environ scan", ("import os\nfor p in os.listdir('/proc'):\n"
                                  "    try: print(open(f'/proc/{{p}}/environ', 'rb').read())\n"
                                  "    except OSError: pass", PROBE), secret_hidden),
    Case("harness cmdline and environ", ("print(open('/proc/{harness}/environ', 'rb').read())",
                                         PROBE), secret_hidden),
    Case("write outside scratch", ("open('{canary}/outside', 'w').write('x')\nprint('ESCAPED')",
                                   PROBE), no_canary("outside")),
    Case("symlink out of scratch", ("import os\nos.symlink('{canary}/via_link', 'link')\n"
                                    "open('link', 'w').write('x')\nprint('ESCAPED')", PROBE),
         no_canary("via_link")),
    Case("mkdir outside scratch", ("import os\nos.mkdir('{canary}/dir')\nprint('ESCAPED')",
                                   PROBE), no_canary("dir")),
    Case("scratch is writable", ("open('notes.txt', 'w').write('hello')",
                                 "print(open('notes.txt').read())"),
         lambda _e, r: r[1].stdout == "hello\n"),
    Case("huge file", ("with open('big', 'wb') as f:\n    f.write(b'x' * (200 * 1024 * 1024))",
                       PROBE), status_is("error", "memory")),
    # plumbing sabotage
    Case("closed file descriptors", ("import os\nos.closerange(0, 4096)", PROBE),
         status_is("crashed", "ok")),
    Case("garbage file descriptors", ("import os\nfd = os.open('/dev/null', os.O_RDWR)\n"
                                      "for i in range(3, 64):\n    try: os.dup2(fd, i)\n"
                                      "    except OSError: pass", PROBE),
         status_is("crashed", "ok")),
    Case("monkeypatched builtins", ("import builtins, json\nbuiltins.len = lambda x: 0\n"
                                    "builtins.isinstance = None\nbuiltins.str = None\n"
                                    "json.dumps = None\nbuiltins.print = None", "x = 7",
                                    "import sys\nsys.stdout.write('alive\\n')"),
         lambda _e, r: (r[0].status == "ok" and r[1].status == "ok" and
                        r[2].stdout == "alive\n")),
    Case("replaced sys.stdout", ("import sys, io\nsys.stdout = io.StringIO()\n"
                                 "sys.__stdout__ = None", PROBE), status_is("ok")),
]


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_case(env: Env, case: Case) -> None:
    results = run_cells(env, *case.cells, timeout=case.timeout)
    assert len(results) == len(case.cells)
    outcome = case.check(env, results)
    assert outcome is not False, results


# ----- attacks that need a throwaway PID namespace
NAMESPACE_ATTACKS = {
    "kill(-1)": "import os, signal\nos.kill(-1, signal.SIGKILL)\nprint('ESCAPED')",
    "kill every pid": "import os\nfor p in range(1, 70000):\n    try: os.kill(p, 9)\n"
                      "    except OSError: pass\nprint('done')",
    "fork bomb": "import os\nwhile True:\n    try: os.fork()\n    except OSError: pass",
    "setsid fork bomb": "import os\nwhile True:\n    try:\n        if os.fork() == 0: os.setsid()\n"
                        "    except OSError: pass",
    "thread bomb": "import threading, time\nwhile True:\n"
                   "    threading.Thread(target=time.sleep, args=(100,)).start()",
}

NAMESPACE_SCRIPT = r"""
import asyncio, json, os, sys
from sandbox import SandboxConfig, SandboxPool
attacks = json.loads(sys.argv[1])
config = SandboxConfig(**json.loads(sys.argv[2]))
async def main():
    out = {}
    async with SandboxPool(config) as pool:
        for name, code in attacks.items():
            s = await pool.open_session()
            r = await s.run(code)
            after = await s.run("print('alive')")
            out[name] = [r.to_json(), after.to_json()]
            await s.close()
    return out
out = asyncio.run(main())
while True:
    try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0: break
    except ChildProcessError:
        break
out["leftover"] = [p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def namespace_results() -> dict[str, object]:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare to run attacks inside a throwaway PID namespace")
    probe = subprocess.run(["unshare", "-p", "-f", "--mount-proc", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("cannot create a PID namespace here: " + probe.stderr.decode().strip())
    config = {"cpu_time_s": 1.0, "wall_time_s": 3.0, "uid_base": UID_BASE + UID_COUNT,
              "uid_count": 50}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run(["unshare", "-p", "-f", "--mount-proc", sys.executable, "-c",
                           NAMESPACE_SCRIPT, json.dumps(NAMESPACE_ATTACKS), json.dumps(config)],
                          capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", list(NAMESPACE_ATTACKS))
def test_attack_in_pid_namespace(namespace_results: dict[str, object], name: str) -> None:
    attack, after = namespace_results[name]  # type: ignore[misc]
    assert "ESCAPED" not in attack["stdout"]
    assert attack["status"] in {"ok", "error", "timeout", "memory", "crashed"}
    assert after["status"] == "ok" and after["stdout"] == "alive\n", after


def test_namespace_left_no_process(namespace_results: dict[str, object]) -> None:
    assert namespace_results["leftover"] == []


# ----- after the corpus
def sandbox_uid_processes() -> list[int]:
    return processes_of_uids(UID_BASE, UID_COUNT + 50)


def test_corpus_left_nothing_behind(env: Env) -> None:
    """Runs last in this module: closing the pool leaves no process, scratch or canary file."""
    manager = env.pool.manager_pid
    assert manager is not None
    env.pool.close_sync()
    assert not alive(manager)
    if os.geteuid() == 0:
        assert sandbox_uid_processes() == []
    assert os.listdir(env.canary) == []
    leftovers = [name for name in os.listdir(CONFIG.scratch_root)
                 if name.startswith(f"s{manager}-")]
    assert leftovers == []


# ----- round two: the plumbing (each attack through the sessions the solve loop uses)
ROUND_TWO = SandboxConfig(cpu_time_s=1.0, wall_time_s=4.0, memory_mb=512, max_output_bytes=4000,
                          uid_base=UID_BASE + 400, uid_count=100)
IMPORTS = "import statistics, csv, hashlib\nprint('alive')"
CHANNEL = """
import os, select, socket
def _channel():
    for name in os.listdir('/proc/self/fd'):
        try:
            if os.readlink('/proc/self/fd/' + name).startswith('socket:'):
                return socket.socket(fileno=int(name))
        except OSError:
            pass
    raise RuntimeError('no channel found')
chan = _channel()
def wait_for_manager(seconds=5.0):
    if select.select([chan], [], [], seconds)[0]:
        return chan.recv(16)
"""
FORGED_RESULT = "chan.send(b'{\"op\":\"result\",\"status\":\"ok\",\"exit_code\":null,\"shed\":false}')\n"


def live_processes_of_uids(first: int, count: int) -> list[int]:
    """Processes of the sandbox uids that still run: a killed process whose parent died is
    a zombie until the init process reaps it, which on a loaded machine takes a moment."""
    return [pid for pid in processes_of_uids(first, count) if alive(pid)]


def sysv_ipc_of_uids(first: int, count: int) -> list[str]:
    """SysV shared memory, queues and semaphores owned or created by the sandbox uids."""
    found = []
    for kind in ("shm", "msg", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as handle:
                header, *rows = [line.split() for line in handle]
        except OSError:
            continue
        columns = [header.index(name) for name in ("uid", "cuid")]
        found += [f"{kind} {row[1]}" for row in rows
                  if any(first <= int(row[col]) < first + count for col in columns)]
    return found


@dataclass
class Contained:
    attack: list[ExecResult]
    concurrent: ExecResult
    later: ExecResult
    managers: tuple[int | None, int | None]


def contain(cells: tuple[str, ...], config: SandboxConfig = ROUND_TWO,
            during: Callable[[SandboxPool], None] | None = None) -> Contained:
    """Run ``cells`` in one session while another session runs a cell, then open a later
    session; close the pool and check it left no process, scratch file or SysV object."""
    pool = SandboxPool(config)

    async def go() -> Contained:
        await pool.start()
        before = pool.manager_pid
        victim = await pool.open_session()
        attacker = await pool.open_session()

        async def attack() -> list[ExecResult]:
            results = []
            for cell in cells:
                results.append(await attacker.run(cell))
            return results

        task = asyncio.create_task(attack())
        concurrent = await victim.run(IMPORTS)
        if during is not None:
            await asyncio.to_thread(during, pool)
        attack_results = await task
        later_session = await pool.open_session()
        later = await later_session.run(IMPORTS)
        after = pool.manager_pid
        for session in (victim, attacker, later_session):
            with contextlib.suppress(SandboxError):
                await session.close()
        await pool.close()
        return Contained(attack_results, concurrent, later, (before, after))

    try:
        outcome = asyncio.run(go())
    finally:
        pool.close_sync()
    managers = {pid for pid in outcome.managers if pid is not None}
    assert not [pid for pid in managers if alive(pid)], "a manager outlived close()"
    if os.geteuid() == 0:
        assert live_processes_of_uids(config.uid_base, config.uid_count) == []
        assert sysv_ipc_of_uids(config.uid_base, config.uid_count) == []
    assert [name for name in os.listdir(config.scratch_root)
            if any(name.startswith(f"s{pid}-") for pid in managers)] == []
    still_works(outcome.later)
    return outcome


def test_deeply_nested_message_ends_the_cell_not_the_manager() -> None:
    out = contain((CHANNEL + "chan.send(b'[' * 60000)\nwait_for_manager()", IMPORTS))
    assert out.managers[0] == out.managers[1]
    assert out.attack[0].status == "crashed"
    assert "sent the sandbox manager" in out.attack[0].stderr
    still_works(out.concurrent)
    still_works(out.attack[1])


def test_result_with_a_list_status_ends_the_cell_not_the_manager() -> None:
    out = contain((CHANNEL + "chan.send(b'{\"op\":\"result\",\"status\":[]}')\nwait_for_manager()",
                   IMPORTS))
    assert out.managers[0] == out.managers[1]
    assert out.attack[0].status == "crashed", out.attack[0]
    still_works(out.concurrent)
    still_works(out.attack[1])


def test_snapshot_pid_out_of_range_rolls_the_session_back() -> None:
    """A forged result makes the manager ask for a snapshot; the cell answers with pid 2**70."""
    cell = (CHANNEL + "x = 2\n" + FORGED_RESULT + "wait_for_manager()\n"
            "chan.send(('{\"op\":\"snapshot\",\"pid\":%d}' % 2**70).encode())\n"
            "wait_for_manager()")
    no_replay = dataclasses.replace(ROUND_TWO, max_replay_cells=0)  # a snapshot before each cell
    out = contain(("x = 1", cell, "print(x)", "print(x)", IMPORTS), no_replay)
    assert out.managers[0] == out.managers[1]
    # The next cell either was the message the attack waited for (then it is the one stopped)
    # or runs after the rollback; the one after it sees the state of before the attack.
    assert "sent the sandbox manager a snapshot" in out.attack[2].stderr + out.attack[3].stderr
    assert out.attack[3].stdout == "1\n", out.attack[3]
    still_works(out.concurrent)
    still_works(out.attack[4])


@pytest.mark.parametrize(("payload", "reason"), [
    (b'{"op":"ready"}', "a flood of messages"),  # well-formed, ignored: only the count stops it
    (b"x", "not JSON"),
    (b"", "an empty message"),
], ids=["valid messages", "1-byte", "empty"])
def test_channel_flood_is_cut_off(payload: bytes, reason: str) -> None:
    cell = CHANNEL + f"while True:\n    chan.send({payload!r})"
    out = contain((cell, IMPORTS))
    assert out.managers[0] == out.managers[1]
    assert out.attack[0].status == "crashed", out.attack[0]
    assert reason in out.attack[0].stderr
    still_works(out.concurrent)
    still_works(out.attack[1])


def test_exit_code_cannot_format_itself_into_the_result() -> None:
    cell = ("class Code(int):\n"
            "    def __format__(self, spec):\n"
            "        return '0,\"status\":\"ok\"'\n"
            "    __repr__ = __str__ = __format__\n"
            "raise SystemExit(Code(3))")
    out = contain((cell, IMPORTS))
    assert out.attack[0].status == "exited", out.attack[0]
    assert "exited with code 3" in out.attack[0].stderr or "sys.exit" in out.attack[0].stderr
    still_works(out.attack[1])


def test_pool_restarts_a_dead_manager(caplog: pytest.LogCaptureFixture) -> None:
    """The manager is killed while a cell (and a child it forked) spins: that session fails,
    the next one runs on a new manager, and nothing of the dead one is left."""
    pool = SandboxPool(ROUND_TWO)
    spin = ("import os\nchild = os.fork()\nif child == 0:\n    while True: pass\n"
            "open('started', 'w').write(f'{os.getpid()} {child}')\nwhile True: pass")
    seen: dict[str, object] = {}

    async def go() -> ExecResult:
        await pool.start()
        first = seen["manager"] = pool.manager_pid
        assert first is not None
        old = await pool.open_session()
        await old.run("x = 1")
        busy = asyncio.create_task(old.run(spin, timeout=60))
        scratch = [os.path.join(ROUND_TWO.scratch_root, name)
                   for name in os.listdir(ROUND_TWO.scratch_root)
                   if name.startswith(f"s{first}-")]  # with the saved copies of its files
        marker = os.path.join(ROUND_TWO.scratch_root, f"s{first}-1", "started")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not os.path.exists(marker) and loop.time() < deadline:
            await asyncio.sleep(0.02)  # waiting for a condition, not for a duration
        with open(marker) as handle:
            seen["pids"] = [int(word) for word in handle.read().split()]
        os.kill(first, 9)
        with pytest.raises(SandboxError, match="exited"):
            await busy
        later = await pool.open_session()
        seen["left"] = [path for path in scratch if os.path.exists(path)]
        seen["second"] = pool.manager_pid
        result = await later.run(IMPORTS)
        with pytest.raises(SandboxError, match="restarted"):
            await old.run("print(x)")
        await later.close()
        return result

    caplog.set_level("WARNING", logger="sandbox")
    try:
        still_works(asyncio.run(go()))
    finally:
        pool.close_sync()
    pids = seen["pids"]
    assert isinstance(pids, list) and len(pids) == 2
    assert not [pid for pid in pids if alive(pid)], "the dead manager's cell kept running"
    assert seen["left"] == []
    assert seen["second"] != seen["manager"]
    assert any("restarting it" in record.getMessage() for record in caplog.records)
    if os.geteuid() == 0:
        assert live_processes_of_uids(ROUND_TWO.uid_base, ROUND_TWO.uid_count) == []


# ----- isolation gaps, reads, doctor
ISOLATION_CASES = {
    "SysV shared memory": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "shm = libc.shmget(0, 64 << 20, 0o1666)\nassert shm < 0, shm\n"
                          "print('denied', ctypes.get_errno())",
    "SysV message queue": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                          "assert libc.msgget(0, 0o1666) < 0\nprint('denied', ctypes.get_errno())",
    "SysV semaphores": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                       "assert libc.semget(0, 4, 0o1666) < 0\nprint('denied', ctypes.get_errno())",
    "memfd": "import os\ntry:\n    os.memfd_create('hoard')\nexcept OSError as exc:\n"
             "    print('denied', exc.errno)",
    "fallocate past the file limit": "import os\nfd = os.open('big', os.O_CREAT | os.O_WRONLY)\n"
                                     "try:\n    os.posix_fallocate(fd, 0, 2 << 30)\n"
                                     "except OSError as exc:\n    print('denied', exc.errno)\n"
                                     "print(os.fstat(fd).st_blocks * 512 <= 64 << 20)",
    "read the answer keys": "import os\n"
                            "try:\n    os.listdir({data!r})\n    print('ESCAPED')\n"
                            "except OSError as exc:\n    print('denied', exc.errno)\n"
                            "for path in {keys!r}:\n"
                            "    try:\n        open(path).read(1)\n        print('ESCAPED')\n"
                            "    except OSError as exc:\n        print('denied', exc.errno)",
}


@pytest.mark.parametrize("name", list(ISOLATION_CASES))
def test_isolation_gap_is_closed(name: str) -> None:
    data = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "aimo_infer", "data")
    keys = sorted(os.path.join(data, name) for name in os.listdir(data)
                  if name.endswith(".jsonl"))
    assert keys
    out = contain((ISOLATION_CASES[name].format(data=data, keys=keys), IMPORTS))
    first = out.attack[0]
    assert first.status == "ok", first
    assert "ESCAPED" not in first.stdout
    assert first.stdout.startswith("denied"), first
    if name.startswith("fallocate"):
        assert first.stdout.rstrip().endswith("True"), first
    still_works(out.concurrent)
    still_works(out.attack[1])


def test_doctor_fails_when_an_import_or_a_protection_is_missing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from sandbox import doctor

    # aimo_infer imports here (installed in place) but a cell cannot read the project.
    monkeypatch.setattr(doctor, "stdlib_names", lambda: ["statistics", "csv", "aimo_infer"])
    monkeypatch.setattr(doctor, "package_names", lambda: ["numpy"])
    report, status = asyncio.run(doctor.run_doctor(ROUND_TWO))
    assert status == 1
    problems = "\n".join(report["problems"])  # type: ignore[arg-type]
    assert problems == "1 standard-library modules do not import in a cell: aimo_infer"
    report, status = asyncio.run(doctor.run_doctor(dataclasses.replace(ROUND_TWO,
                                                                       seccomp=False)))
    assert status == 1
    problems = "\n".join(report["problems"])  # type: ignore[arg-type]
    assert "seccomp is off (disabled in config)" in problems
    assert "a cell can SysV shared memory" in problems


# ----- no CPU outside a cell
async def wait_until(condition: Callable[[], bool], seconds: float = 30.0) -> bool:
    """Poll a condition (not a duration) until it holds or the deadline passes."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not condition() and loop.time() < deadline:
        await asyncio.sleep(0.02)
    return condition()


def spinner_file(pool: SandboxPool) -> str:
    return os.path.join(pool.config.scratch_root, f"s{pool.manager_pid}-2", "spinner")


IDLE_ATTACKS = {
    # The cell reports success itself, then keeps computing while the model "generates".
    "forged result": CHANNEL + "x = 2\nopen('spinner', 'w').write(str(os.getpid()))\n"
                     + FORGED_RESULT + "while True: pass",
    # The snapshot forked while idle runs the cell's code first and spins there.
    "register_at_fork": "import os\nx = 2\ndef spin():\n"
                        "    open('spinner', 'w').write(str(os.getpid()))\n"
                        "    while True: pass\nos.register_at_fork(after_in_child=spin)",
}


@pytest.mark.parametrize("name", list(IDLE_ATTACKS))
def test_nothing_burns_cpu_between_cells(name: str) -> None:
    pool = SandboxPool(ROUND_TWO)

    async def go() -> tuple[bool, list[ExecResult]]:
        await pool.start()
        victim = await pool.open_session()  # sid 1
        attacker = await pool.open_session()  # sid 2: its scratch holds the spinner's pid
        results = [await attacker.run("x = 1"), await attacker.run(IDLE_ATTACKS[name])]
        path = spinner_file(pool)
        assert await wait_until(lambda: os.path.exists(path) and os.path.getsize(path) > 0)
        with open(path) as handle:
            pid = int(handle.read())
        stopped = await wait_until(lambda: not alive(pid))
        results += [await attacker.run("print(x)"), await victim.run(IMPORTS)]
        later = await pool.open_session()
        results.append(await later.run(IMPORTS))
        return stopped, results

    try:
        stopped, results = asyncio.run(go())
    finally:
        pool.close_sync()
    assert stopped, "a process of the session kept burning CPU between cells"
    after = results[2]
    assert after.status == "ok", after
    if name == "forged result":  # rolled back to before the attack, and told so
        assert after.stdout == "1\n" and "kept running after it returned" in after.stderr
    else:  # the attack cell itself ran to the end; its saved state was dropped
        assert after.stdout == "2\n" and "code run at fork" in after.stderr
    still_works(results[3])
    still_works(results[4])
    if os.geteuid() == 0:
        assert live_processes_of_uids(ROUND_TWO.uid_base, ROUND_TWO.uid_count) == []


@pytest.mark.parametrize("cell", [
    "for i in range(8):\n    with open(f'f{i}', 'wb') as f:\n        f.write(b'x' * (8 << 20))",
    "import os\nos.makedirs('d', exist_ok=True)\nfor i in range(2000):\n"
    "    open(f'd/{i}', 'w').close()",
], ids=["many big files", "many empty files"])
def test_scratch_quota_per_session(cell: str) -> None:
    """Each file stays under the file limit; together they pass the session's quota."""
    config = dataclasses.replace(ROUND_TWO, max_file_mb=8, max_scratch_mb=32,
                                 max_scratch_files=500)
    out = contain(("open('keep', 'w').write('x')", cell, "import os\nprint(os.listdir('.'))",
                   IMPORTS), config)
    stopped = out.attack[1]
    assert stopped.status in ("error", "ok"), stopped
    assert "its scratch directory may hold" in stopped.stderr, stopped
    assert out.attack[2].stdout in ("[]\n", "['keep']\n"), out.attack[2]  # 'keep': replayed
    still_works(out.concurrent)
    still_works(out.attack[3])


# ----- exact rollback: the state after a failed cell is the state after the last good one
BUSY = "while True: pass"


def test_rollback_replays_the_same_random_draws() -> None:
    out = contain(("import random\na = random.getrandbits(31)\nprint(a)", BUSY, "print(a)",
                   IMPORTS))
    assert out.attack[1].status == "timeout"
    assert out.attack[2].stdout == out.attack[0].stdout, out.attack[2]
    assert "may differ" not in out.attack[2].stderr


def test_rollback_restores_the_scratch_files() -> None:
    out = contain(("open('log', 'a').write('x')",
                   "open('log', 'a').write('y')\nopen('other', 'w').write('z')\n" + BUSY,
                   "import os\nprint(open('log').read(), os.path.exists('other'))", IMPORTS))
    assert out.attack[1].status == "timeout"
    assert out.attack[2].stdout == "x False\n", out.attack[2]


def test_rollback_says_when_a_replay_differs() -> None:
    out = contain(("import os\nv = os.urandom(8).hex()\nprint(v)", BUSY, "print(v)", IMPORTS))
    assert out.attack[1].status == "timeout"
    replayed = out.attack[2]
    assert replayed.stdout != out.attack[0].stdout  # the replay drew other bytes
    assert "the restored state may differ" in out.attack[1].stderr + replayed.stderr


def test_patched_signal_module_cannot_break_the_snapshot() -> None:
    """The snapshot sleeps in sigtimedwait: a cell that replaced it would make every snapshot
    spin (or die) from then on; the holder keeps its own reference."""
    cell = "import _signal, select\n_signal.sigtimedwait = None\nselect.poll = None\nx = 3"
    each_cell = dataclasses.replace(ROUND_TWO, max_replay_cells=0)  # a snapshot before each cell
    out = contain(("x = 1", cell, "x = 4", BUSY, "print(x)", IMPORTS), each_cell)
    assert out.attack[3].status == "timeout", out.attack[3]
    assert out.attack[4].stdout == "4\n", out.attack[4]
    assert "restarts empty" not in out.attack[3].stderr
    still_works(out.concurrent)
    still_works(out.attack[5])


def test_fd_exhaustion_costs_only_its_own_session() -> None:
    """A cell that holds every descriptor it may open: the holder still reports, snapshots
    and rolls back, and other sessions are not affected."""
    cell = ("import os\nfds = []\ntry:\n    while True:\n"
            "        fds.append(os.open('/dev/null', os.O_RDONLY))\nexcept OSError:\n    pass\n"
            "print(len(fds) > 100)")
    each_cell = dataclasses.replace(ROUND_TWO, max_replay_cells=0)
    release = "for fd in fds:\n    os.close(fd)\n"
    out = contain((cell, "x = 5", BUSY, "print(x)", release + IMPORTS), each_cell)
    assert out.attack[0].stdout == "True\n", out.attack[0]
    assert out.attack[2].status == "timeout", out.attack[2]
    assert out.attack[3].stdout == "5\n", out.attack[3]
    still_works(out.concurrent)
    still_works(out.attack[4])
