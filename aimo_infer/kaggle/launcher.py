"""Start an OpenAI-compatible model server (vLLM, TensorRT-LLM, llama.cpp) as a child process.

On Kaggle the model lives under ``/kaggle/input/...`` and the ``openai`` engine talks to a
server on loopback. The launcher builds the server's command line from a ``[model_server]``
TOML table, optionally pre-reads the weight files into the page cache (Kaggle's input disk is
slow on first read), waits for ``/v1/models`` with a timeout and a clear error, and stops the
server when it exits (and, on Linux, when the launcher dies).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import ipaddress
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import IO

from aimo_infer.config import ConfigError, dataclass_from_table, read_toml

KINDS = ("vllm", "trtllm", "llamacpp")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf", ".engine")
PREREAD_CHUNK = 16 << 20
STOP_TIMEOUT_S = 20.0
POLL_S = 0.5


class LaunchError(RuntimeError):
    """The model server did not come up; the message says why and ends with its log tail."""


@dataclass
class ModelServerConfig:
    """The ``[model_server]`` table."""

    kind: str = "vllm"  # vllm | trtllm | llamacpp
    model: str = ""  # a path under /kaggle/input/... (a Kaggle Models mount)
    host: str = "127.0.0.1"  # loopback only
    port: int = 8000
    served_model_name: str | None = None
    args: list[str] = field(default_factory=list)  # the server's own flags, passed as they are
    preread: bool = False  # read the weight files once so the server loads from page cache
    ready_timeout_s: float = 1200.0
    log: str | None = None  # the server's stdout and stderr (default: model-server.log)


def check_server_config(cfg: ModelServerConfig) -> None:
    if cfg.kind not in KINDS:
        raise ConfigError(f"model_server.kind must be one of {list(KINDS)}, got {cfg.kind!r}")
    if not cfg.model:
        raise ConfigError("model_server.model is empty: give the model path")
    host = "127.0.0.1" if cfg.host == "localhost" else cfg.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ConfigError(f"model_server.host must be a loopback address, got {cfg.host!r}")
    if not 1 <= cfg.port <= 65535:
        raise ConfigError(f"model_server.port must be 1-65535, got {cfg.port}")
    if cfg.ready_timeout_s <= 0:
        raise ConfigError("model_server.ready_timeout_s must be > 0")


def load_server_config(path: str | Path) -> ModelServerConfig:
    """The ``[model_server]`` table of a TOML file, checked."""
    p = Path(path)
    data = read_toml(p, "model server config", ConfigError)
    if "model_server" not in data:
        raise ConfigError(f"{p}: no [model_server] table")
    try:
        cfg: ModelServerConfig = dataclass_from_table(ModelServerConfig, data["model_server"],
                                                      "model_server")
        check_server_config(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    return cfg


def server_command(cfg: ModelServerConfig) -> list[str]:
    """The child's argv: ``vllm serve``, ``trtllm-serve`` or llama.cpp's OpenAI server."""
    where = ["--host", cfg.host, "--port", str(cfg.port)]
    if cfg.kind == "vllm":
        name = ["--served-model-name", cfg.served_model_name] if cfg.served_model_name else []
        return ["vllm", "serve", cfg.model, *where, *name, *cfg.args]
    if cfg.kind == "trtllm":
        return ["trtllm-serve", cfg.model, *where, *cfg.args]
    alias = ["--model_alias", cfg.served_model_name] if cfg.served_model_name else []
    return [sys.executable, "-m", "llama_cpp.server", "--model", cfg.model, *where, *alias,
            *cfg.args]


def weight_files(model: str) -> list[Path]:
    """The files a server reads its weights from: the model file, or those in its folder."""
    p = Path(model)
    if p.is_file():
        return [p]
    if p.is_dir():
        return sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    return []


def preread(paths: list[Path], stop: threading.Event | None = None) -> int:
    """Read every file once (the kernel keeps it in the page cache); bytes read."""
    total = 0
    for path in paths:
        try:
            with path.open("rb", buffering=0) as fh:
                with contextlib.suppress(AttributeError, OSError):
                    os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                while chunk := fh.read(PREREAD_CHUNK):
                    total += len(chunk)
                    if stop is not None and stop.is_set():
                        return total
        except OSError:
            continue  # a file the server cannot read either: its own error will say so
    return total


def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the launcher dies (Linux prctl)."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ModelServer:
    """One model server child: ``start``, ``wait_ready``, ``stop`` (also at interpreter exit)."""

    def __init__(self, cfg: ModelServerConfig) -> None:
        check_server_config(cfg)
        self.cfg = cfg
        self.log_path = Path(cfg.log or "model-server.log")
        self.proc: subprocess.Popen[bytes] | None = None
        self.preread_bytes = 0
        self._preread_stop = threading.Event()
        self._preread_thread: threading.Thread | None = None
        self._log: IO[bytes] | None = None

    @property
    def base_url(self) -> str:
        host = f"[{self.cfg.host}]" if ":" in self.cfg.host else self.cfg.host
        return f"http://{host}:{self.cfg.port}"

    def start(self) -> None:
        command = server_command(self.cfg)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        except FileNotFoundError:
            self.stop()
            raise LaunchError(f"cannot start the {self.cfg.kind} server: {command[0]!r} is not "
                              "installed (is the bundle installed?)") from None
        atexit.register(self.stop)
        if self.cfg.preread:  # after the fork: a child forked beside a running thread is fragile
            files = weight_files(self.cfg.model)

            def read() -> None:
                self.preread_bytes = preread(files, self._preread_stop)

            self._preread_thread = threading.Thread(target=read, name="preread", daemon=True)
            self._preread_thread.start()

    def wait_ready(self) -> float:
        """Seconds until ``/v1/models`` answered 200; ``LaunchError`` on exit or timeout."""
        import httpx

        assert self.proc is not None, "start() first"
        began = time.monotonic()
        deadline = began + self.cfg.ready_timeout_s
        while True:
            code = self.proc.poll()
            if code is not None:
                self.stop()
                raise LaunchError(f"the {self.cfg.kind} server exited with code {code} before "
                                  f"it was ready; last lines of {self.log_path}:\n"
                                  f"{_tail(self.log_path)}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.base_url + "/v1/models", timeout=2.0).status_code == 200:
                    return time.monotonic() - began
            if time.monotonic() >= deadline:
                self.stop()
                raise LaunchError(f"the {self.cfg.kind} server was not ready within "
                                  f"{self.cfg.ready_timeout_s:.0f}s (model_server."
                                  f"ready_timeout_s); last lines of {self.log_path}:\n"
                                  f"{_tail(self.log_path)}")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """Terminate the server (kill it after ``STOP_TIMEOUT_S``); safe to call twice."""
        self._preread_stop.set()
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=STOP_TIMEOUT_S)
        if self._log is not None:
            self._log.close()
            self._log = None
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def __enter__(self) -> ModelServer:
        self.start()
        self.wait_ready()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def _stop_on_signals(server: ModelServer) -> Iterator[None]:
    """SIGTERM/SIGINT stop the server and end the launcher (exit code 128 + signal)."""
    def handler(signum: int, frame: FrameType | None) -> None:
        server.stop()
        raise SystemExit(128 + signum)

    saved = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in saved.items():
            signal.signal(s, h)


def add_serve_model_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "serve-model", help="start the model server (vLLM, TensorRT-LLM, llama.cpp) on loopback",
        description="Start `vllm serve`, `trtllm-serve` or llama.cpp's OpenAI server as a "
        "child with the flags of the config's [model_server] table, wait until /v1/models "
        "answers (model_server.ready_timeout_s), then keep it running until the server exits "
        "or this command is stopped (SIGTERM, Ctrl-C), and stop it then. With "
        "model_server.preread the weight files are read into the page cache while it starts.",
        epilog="Example: aimo-infer serve-model --config configs/kaggle-model-server.toml",
    )
    p.add_argument("--config", metavar="FILE", required=True,
                   help="TOML file with a [model_server] table")
    p.add_argument("--model", metavar="PATH",
                   help="model path (overrides model_server.model), e.g. a /kaggle/input mount")
    p.add_argument("--ready-only", action="store_true",
                   help="stop the server once it is ready (a check that it starts)")
    p.set_defaults(func=_cmd_serve_model)


def _cmd_serve_model(args: argparse.Namespace) -> int:
    cfg = load_server_config(args.config)
    if args.model:
        cfg.model = args.model
    server = ModelServer(cfg)
    with _stop_on_signals(server):
        try:
            server.start()
            waited = server.wait_ready()
            print(f"model server ready at {server.base_url} after {waited:.1f}s "
                  f"(log: {server.log_path})", flush=True)
            if args.ready_only:
                return 0
            assert server.proc is not None
            code = server.proc.wait()
            print(f"model server exited with code {code}", file=sys.stderr)
            return 0 if code == 0 else 1
        except LaunchError as exc:
            print(f"aimo-infer: error: {exc}", file=sys.stderr)
            return 1
        finally:
            server.stop()
