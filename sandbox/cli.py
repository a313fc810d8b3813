"""``python -m sandbox``: run one cell (optionally in a kept session) or report the protections.

``exec --session FILE`` keeps state across calls through a small daemon: the first call starts
it in the background and writes its unix socket path to FILE; later calls connect to it. The
daemon exits after ``--idle-exit`` seconds without calls or on ``close --session FILE``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time

from sandbox.config import SandboxConfig
from sandbox.pool import SandboxError, SandboxPool
from sandbox.protocol import ProtocolError, encode, read_frame_blocking

DAEMON_START_S = 60.0


def _config(args: argparse.Namespace) -> SandboxConfig:
    overrides: dict[str, object] = {}
    if getattr(args, "memory_mb", None):
        overrides["memory_mb"] = args.memory_mb
    if getattr(args, "timeout", None):
        overrides["cpu_time_s"] = args.timeout
        overrides["wall_time_s"] = max(10.0, args.timeout * 5)
    config = SandboxConfig(**overrides)  # type: ignore[arg-type]
    config.validate()
    return config


async def _run_once(config: SandboxConfig, code: str) -> dict[str, object]:
    async with SandboxPool(config) as pool:
        session = await pool.open_session()
        result = await session.run(code)
        await session.close()
    return result.to_json()


# ----- session daemon
def _read_session_file(path: str) -> str | None:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return None
    sock = data.get("socket") if isinstance(data, dict) else None
    return sock if isinstance(sock, str) else None


def _call_daemon(sock_path: str, message: dict[str, object]) -> dict[str, object] | None:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(sock_path)
            conn.sendall(encode(message))
            return read_frame_blocking(conn.fileno())
    except (OSError, ProtocolError):
        return None


def _start_daemon(args: argparse.Namespace) -> str:
    command = [sys.executable, "-m", "sandbox", "serve", "--session", args.session,
               "--idle-exit", str(args.idle_exit)]
    if args.memory_mb:
        command += ["--memory-mb", str(args.memory_mb)]
    with contextlib.suppress(FileNotFoundError):
        os.unlink(args.session)
    subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
    deadline = time.monotonic() + DAEMON_START_S
    while time.monotonic() < deadline:
        sock_path = _read_session_file(args.session)
        if sock_path is not None:
            return sock_path
        time.sleep(0.05)
    raise SandboxError("the session daemon did not start")


def _exec_in_session(args: argparse.Namespace, code: str) -> dict[str, object]:
    message = {"op": "run", "code": code, "timeout": args.timeout}
    sock_path = _read_session_file(args.session)
    reply = _call_daemon(sock_path, message) if sock_path else None
    if reply is None:
        reply = _call_daemon(_start_daemon(args), message)
    if reply is None or not reply.get("ok"):
        raise SandboxError(str((reply or {}).get("error", "the session daemon did not answer")))
    result = reply["result"]
    assert isinstance(result, dict)
    return result


async def _serve(args: argparse.Namespace) -> None:
    config = _config(argparse.Namespace(memory_mb=args.memory_mb, timeout=None))
    workdir = tempfile.mkdtemp(prefix="sandbox-session-")
    sock_path = os.path.join(workdir, "socket")
    last_call = time.monotonic()
    async with SandboxPool(config) as pool:
        session = await pool.open_session()
        done = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            nonlocal last_call
            last_call = time.monotonic()
            try:
                header = await reader.readexactly(4)
                body = await reader.readexactly(int.from_bytes(header, "big"))
                message = json.loads(body)
                if message.get("op") == "close":
                    reply: dict[str, object] = {"ok": True}
                    done.set()
                else:
                    result = await session.run(str(message["code"]), message.get("timeout"))
                    reply = {"ok": True, "result": result.to_json()}
            except (asyncio.IncompleteReadError, ValueError, KeyError, SandboxError) as exc:
                reply = {"ok": False, "error": str(exc)}
            writer.write(encode(reply))
            await writer.drain()
            writer.close()
            last_call = time.monotonic()

        server = await asyncio.start_unix_server(handle, sock_path)
        os.chmod(sock_path, 0o600)
        tmp = args.session + ".tmp"
        with open(tmp, "w") as handle_file:
            json.dump({"socket": sock_path, "pid": os.getpid()}, handle_file)
        os.replace(tmp, args.session)
        while not done.is_set() and time.monotonic() - last_call < args.idle_exit:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(done.wait(), 1.0)
        server.close()
        await session.close()
    with contextlib.suppress(OSError):
        os.unlink(sock_path)
        os.rmdir(workdir)
    with contextlib.suppress(OSError):
        if _read_session_file(args.session) == sock_path:
            os.unlink(args.session)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m sandbox", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("exec", help="run code from stdin and print one JSON result")
    run.add_argument("--timeout", type=float, help="CPU seconds for this cell (default 2)")
    run.add_argument("--memory-mb", type=int, help="memory limit of the session")
    run.add_argument("--session", help="file naming a kept session (created on first use)")
    run.add_argument("--idle-exit", type=float, default=900.0,
                     help="a kept session's daemon exits after this many idle seconds")
    close = sub.add_parser("close", help="stop a kept session's daemon")
    close.add_argument("--session", required=True)
    serve = sub.add_parser("serve", help="internal: the daemon behind a kept session")
    serve.add_argument("--session", required=True)
    serve.add_argument("--memory-mb", type=int)
    serve.add_argument("--idle-exit", type=float, default=900.0)
    sub.add_parser("doctor", help="report the protections in force, probe the walls and check "
                                  "imports; exits 1 when something is missing")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "exec":
            code = sys.stdin.read()
            if args.session:
                result = _exec_in_session(args, code)
            else:
                result = asyncio.run(_run_once(_config(args), code))
            print(json.dumps(result, ensure_ascii=False))
        elif args.command == "close":
            sock_path = _read_session_file(args.session)
            if sock_path is None or _call_daemon(sock_path, {"op": "close"}) is None:
                print(f"error: no running session in {args.session}", file=sys.stderr)
                return 1
        elif args.command == "serve":
            asyncio.run(_serve(args))
        else:
            from sandbox.doctor import run_doctor

            report, status = asyncio.run(run_doctor())
            print(json.dumps(report, indent=2))
            for problem in report["problems"]:  # type: ignore[union-attr]
                print(f"problem: {problem}", file=sys.stderr)
            return status
    except (SandboxError, ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
