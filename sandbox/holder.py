"""The code that runs inside a confined session: executes cells in place and forks snapshots.

A holder keeps the session's state. While the model generates, it forks a snapshot that sleeps;
if a cell fails by a limit, the manager kills the holder and wakes the snapshot, which becomes
the holder with the state from before the cell. Nothing here is trusted by the manager.
"""

from __future__ import annotations

import _signal
import builtins
import contextlib
import linecache
import mmap
import os
import resource
import select
import signal
import socket
import sys
import traceback
from typing import NoReturn

from sandbox.outbuf import StreamWriter

# Bind the builtins this module uses, so cells that monkeypatch ``builtins`` cannot break it.
globals().update({name: value for name, value in vars(builtins).items()
                  if not name.startswith("__")})
_format_exception = traceback.format_exception
_fork = os.fork
_getpid = os.getpid
_exit = os._exit
_fstat = os.fstat
_listdir = os.listdir
_waitpid = os.waitpid
_pipe = os.pipe
_read = os.read
_write = os.write
_close = os.close
_setpriority = os.setpriority
# A cell may patch _signal, select or resource; the holder keeps the originals (a patched
# sigtimedwait would make a sleeping snapshot spin).
_alarm = _signal.alarm
_setitimer = _signal.setitimer
_getsignal = _signal.getsignal
_set_handler = _signal.signal
_sigmask = _signal.pthread_sigmask
_SIG_SETMASK = _signal.SIG_SETMASK
_sigtimedwait = _signal.sigtimedwait
_poll = select.poll
_getrlimit = resource.getrlimit
_RLIMIT_NICE = resource.RLIMIT_NICE

_PEEK_SIZE = int(socket.MSG_PEEK | socket.MSG_TRUNC)  # plain int: enum flags run Python code
_DONTWAIT = int(socket.MSG_DONTWAIT)
CHANNEL_LOST = 120  # exit code: the cell closed or replaced the channel to the manager
MAX_MESSAGE = 16 * 1024 * 1024
WAKE = int(signal.SIGUSR1)
_TIMERS = (_signal.ITIMER_REAL, _signal.ITIMER_VIRTUAL, _signal.ITIMER_PROF)


class CellStream:
    """``sys.stdout`` / ``sys.stderr`` for cells: text in, capped shared buffer out."""

    encoding = "utf-8"
    errors = "backslashreplace"

    def __init__(self, sink: StreamWriter) -> None:
        self._sink = sink
        self.buffer = _BinaryView(sink)

    def write(self, text: str) -> int:
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        self._sink.write(text.encode("utf-8", "backslashreplace"))
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        return None

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError("cell output has no file descriptor")


class _BinaryView:
    def __init__(self, sink: StreamWriter) -> None:
        self._sink = sink

    def write(self, data: bytes) -> int:
        self._sink.write(bytes(data))
        return len(data)

    def flush(self) -> None:
        return None


class Holder:
    """The serve loop of one session's state process."""

    def __init__(self, channel_fd: int, output: mmap.mmap, output_cap: int) -> None:
        self.channel = socket.socket(fileno=channel_fd)
        self.channel_ino = _fstat(channel_fd).st_ino
        self.pid = _getpid()
        self._peek = bytearray(1)
        self._done_fd: int | None = None
        self.out = StreamWriter(output, 0, output_cap)
        self.err = StreamWriter(output, 1, output_cap)
        self.stdout = CellStream(self.out)
        self.stderr = CellStream(self.err)
        self.namespace: dict[str, object] = {"__name__": "__main__", "__builtins__": builtins}
        self.handlers = {int(sig): _signal.getsignal(sig) for sig in signal.valid_signals()
                         if sig not in (signal.SIGKILL, signal.SIGSTOP)}
        signal.pthread_sigmask(signal.SIG_SETMASK, {WAKE})
        sys.set_int_max_str_digits(0)
        sys.dont_write_bytecode = True
        sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
        sys.stdout = sys.__stdout__ = self.stdout  # type: ignore[misc]
        sys.stderr = sys.__stderr__ = self.stderr  # type: ignore[misc]

    def send(self, message: str) -> None:
        """Send a JSON object built by the caller from plain literals (no json module here)."""
        try:
            if _fstat(self.channel.fileno()).st_ino != self.channel_ino:
                _exit(CHANNEL_LOST)
            self.channel.send(message.encode())
        except (OSError, ValueError):
            _exit(CHANNEL_LOST)

    def receive(self) -> bytes | None:
        try:
            size = self.channel.recv_into(self._peek, 1, _PEEK_SIZE)
            data = self.channel.recv(min(max(size, 1), MAX_MESSAGE))
        except OSError:
            _exit(CHANNEL_LOST)
        return data or None

    def serve(self) -> NoReturn:
        """Messages are raw bytes: b"R" + UTF-8 code runs a cell, b"S" forks a snapshot."""
        while True:
            message = self.receive()
            if message is None:
                _exit(0)
            op = message[:1]
            if op == b"R":
                self.run_cell(message[1:].decode("utf-8", "surrogatepass"))
            elif op == b"S":
                self.snapshot()
            else:
                _exit(0)

    def run_cell(self, code: str) -> None:
        self.out.reset()
        self.err.reset()
        sys.stdout = self.stdout
        sys.stderr = self.stderr
        status, exit_code = self._execute(code)
        if _getpid() != self.pid:  # a process the cell forked finished its copy of the cell
            _exit(0)
        self._restore_process_state()
        try:
            shed = self._shed_threads()
        except OSError:  # threads hold every process slot: give the state up instead
            status, shed = "crashed", False
            self._report("[sandbox] the cell left threads that could not be stopped\n")
        code_text = "null" if exit_code is None else _int_text(exit_code)
        self.send(f'{{"op":"result","status":"{status}","exit_code":{code_text},'
                  f'"shed":{"true" if shed else "false"}}}')
        self.after_send()

    def _execute(self, code: str) -> tuple[str, int | None]:
        try:
            compiled = compile(code, "<cell>", "exec")
            linecache.cache["<cell>"] = (len(code), None, code.splitlines(True), "<cell>")
            exec(compiled, self.namespace)
        except SystemExit as exc:
            code_value = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            if exc.code is not None and not isinstance(exc.code, int):
                self._report(f"{exc.code}\n")
            return "exited", code_value
        except MemoryError:
            self._report("MemoryError: the cell ran out of memory\n")
            return "memory", None
        except BaseException as exc:
            self._report_exception(exc)
            return "error", None
        return "ok", None

    def _report(self, text: str) -> None:
        with contextlib.suppress(Exception):
            self.err.write(text.encode("utf-8", "backslashreplace"))

    def _report_exception(self, exc: BaseException) -> None:
        try:
            tb = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
            text = "".join(_format_exception(type(exc), exc, tb))
        except BaseException:
            text = f"{type(exc).__name__} (traceback unavailable)\n"
        self._report(text)

    def _restore_process_state(self) -> None:
        """Undo what a cell may leave armed: alarms, signal handlers, blocked signals, zombies."""
        try:
            _alarm(0)
            for timer in _TIMERS:
                _setitimer(timer, 0)
            for sig, handler in self.handlers.items():
                if _getsignal(sig) is not handler and handler is not None:
                    _set_handler(sig, handler)
            _sigmask(_SIG_SETMASK, {WAKE})
        except (OSError, ValueError, TypeError):
            pass
        while True:
            try:
                pid, _status = _waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break

    def _shed_threads(self) -> bool:
        """Threads a cell left running would keep burning CPU in the state: fork them away."""
        try:
            threads = len(_listdir("/proc/self/task"))
        except OSError:
            threads = 1
        if threads <= 1:
            return False
        done_r, done_w = _pipe()
        saved = _random_state()
        child = _fork()
        if child:
            _close(done_w)
            _read(done_r, 1)  # wait until the clean copy has reported, then drop the threads
            _exit(0)
        _close(done_r)
        _set_random_state(saved)
        self.pid = _getpid()
        self._done_fd = done_w
        return True

    def after_send(self) -> None:
        done = self._done_fd
        if done is not None:
            _write(done, b"x")
            _close(done)
            self._done_fd = None

    def snapshot(self) -> None:
        saved = _random_state()
        try:
            child = _fork()
        except OSError:  # out of process slots: the manager keeps the older snapshot
            self.send('{"op":"snapshot","pid":0}')
            return
        if child:
            self.send(f'{{"op":"snapshot","pid":{child:d}}}')
            return
        self.pid = _getpid()
        _set_random_state(saved)
        can_renice = _getrlimit(_RLIMIT_NICE)[0] >= 20
        if can_renice:  # a sleeping snapshot's exit must not preempt anything
            _setpriority(os.PRIO_PROCESS, 0, 19)
        self._sleep_until_promoted()
        if can_renice:
            _setpriority(os.PRIO_PROCESS, 0, 0)
        self._drop_stale_requests()
        self.send('{"op":"ready"}')

    def _drop_stale_requests(self) -> None:
        """Requests still queued were meant for the holder this snapshot replaces (the manager
        sends none while it promotes): running them would shift every later result by one."""
        while True:
            try:
                self.channel.recv(MAX_MESSAGE, _DONTWAIT)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                _exit(CHANNEL_LOST)

    def _sleep_until_promoted(self) -> None:
        watch = _poll()
        watch.register(self.channel.fileno(), 0)  # only hang-up: the manager is gone
        while True:
            if _sigtimedwait({WAKE}, 1.0) is not None:
                return
            if watch.poll(0):
                _exit(0)


def _random_state() -> tuple[object, object] | None:
    """The global ``random`` generator's state: ``random`` reseeds it in every fork child,
    so a snapshot (or a replayed cell) would draw other numbers than the holder did."""
    module = sys.modules.get("random")
    generator = getattr(module, "_inst", None)
    if generator is None:
        return None
    try:
        return generator, generator.getstate()
    except BaseException:
        return None


def _set_random_state(saved: tuple[object, object] | None) -> None:
    if saved is not None:
        with contextlib.suppress(BaseException):
            saved[0].setstate(saved[1])  # type: ignore[attr-defined]


def _int_text(value: int) -> str:
    """Decimal text of an exit code through ``int``'s own methods: a cell's int subclass
    cannot format itself into the result (its ``__format__`` could write any JSON)."""
    value = int.__int__(value) if isinstance(value, int) else 1
    if not -(2**31) <= value < 2**31:
        value = 1
    return int.__repr__(value)


def main(channel_fd: int, output_fd: int, output_cap: int,
         report: dict[str, str]) -> NoReturn:
    """Entry point in the confined fork: announce readiness, then serve forever."""
    from sandbox.outbuf import map_buffer

    holder = Holder(channel_fd, map_buffer(output_fd, output_cap), output_cap)
    os.close(output_fd)
    import json

    holder.send(json.dumps({"op": "boot", "report": report}))
    holder.serve()
