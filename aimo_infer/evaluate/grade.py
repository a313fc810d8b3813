"""Grading a predicted answer against a reference: integers exactly, the rest symbolically.

Integers are compared exactly and never reduced mod 1000. Anything else goes to math-verify in
a child process with a hard timeout (the process is killed and restarted on overrun), so a huge
exponent cannot hang a dry run, from any thread. Prose references are compared as text.
"""

from __future__ import annotations

import atexit
import functools
import json
import os
import re
import select
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from aimo_infer.solve.answer import normalize_expression, parse_integer

Method = Literal["exact-int", "symbolic", "string", "none"]

MAX_SYMBOLIC_CHARS = 2_000
MAX_EXPONENT = 100_000
WORKER_START_TIMEOUT_S = 120.0

_PLAIN_INT_RE = re.compile(r"[+-]?\d+")
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_WORD_RE = re.compile(r"[A-Za-z]{3,}")
_EXPONENT_RE = re.compile(r"(?:\^|\*\*)\s*\{?\s*(\d+)")
_NESTED_POWER_RE = re.compile(r"\^\s*\{[^{}]*(?:\^|\*\*)")
_BIG_FACTORIAL_RE = re.compile(r"\d{6,}\s*\}?\s*!|\\binom\s*\{\s*\d{6,}")


@dataclass(frozen=True)
class GradeResult:
    """Whether a prediction is right, and how that was decided."""

    correct: bool
    method: Method
    detail: str


def is_equivalent(predicted: str | int | None, reference: str, timeout_s: float = 2.0) -> bool:
    """True when ``predicted`` denotes the same answer as ``reference``."""
    return grade(predicted, reference, timeout_s).correct


def grade(predicted: str | int | None, reference: str, timeout_s: float = 2.0) -> GradeResult:
    """Grade one prediction; a symbolic check longer than ``timeout_s`` counts as not shown."""
    if predicted is None or (isinstance(predicted, str) and not normalize_expression(predicted)):
        return GradeResult(False, "none", "no answer")
    ref = normalize_expression(reference)
    if _PLAIN_INT_RE.fullmatch(ref):
        value = predicted if isinstance(predicted, int) else parse_integer(predicted)
        if value is not None:
            return GradeResult(value == int(ref), "exact-int", f"{value} vs {ref}")
    try:
        pred = normalize_expression(str(predicted))
    except ValueError:  # an int too long to print: no reference here is that long
        return GradeResult(False, "string", "predicted integer too long to compare as text")
    if is_prose(ref):
        return _by_text(pred, ref, "free-text reference")
    if too_costly(pred) or too_costly(ref):
        return _by_text(pred, ref, "too costly for a symbolic check")
    try:
        reply = default_worker().judge(pred, ref, timeout_s)
    except WorkerUnavailable as exc:
        return _by_text(pred, ref, f"symbolic check unavailable ({exc})")
    if reply is None:
        return _by_text(pred, ref, f"symbolic check timed out after {timeout_s:g}s")
    return reply


def is_prose(reference: str) -> bool:
    """A reference written in words ("All positive integers n such that ..."): not a formula."""
    return bool(_WORD_RE.search(_LATEX_COMMAND_RE.sub(" ", reference)))


def too_costly(expression: str) -> bool:
    """Cheap screen for inputs that would make sympy build astronomically large numbers."""
    if len(expression) > MAX_SYMBOLIC_CHARS or _NESTED_POWER_RE.search(expression):
        return True
    if _BIG_FACTORIAL_RE.search(expression):
        return True
    return any(int(m.group(1)) > MAX_EXPONENT for m in _EXPONENT_RE.finditer(expression))


def _by_text(pred: str, ref: str, why: str) -> GradeResult:
    return GradeResult(pred == ref, "string", f"{why}; compared as text")


class WorkerUnavailable(RuntimeError):
    """The symbolic worker could not start (math-verify missing, or the process failed)."""


class SymbolicWorker:
    """A child process running ``aimo_infer.evaluate.symbolic``; killed and restarted on overrun."""

    def __init__(self, start_timeout_s: float = WORKER_START_TIMEOUT_S) -> None:
        self._start_timeout_s = start_timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self._lock = threading.Lock()

    def judge(self, pred: str, ref: str, timeout_s: float) -> GradeResult | None:
        """The worker's verdict, or None when it took longer than ``timeout_s``."""
        with self._lock:
            proc = self._ensure_started()
            assert proc.stdin is not None
            request = json.dumps({"pred": pred, "ref": ref}) + "\n"
            try:
                proc.stdin.write(request.encode())
                proc.stdin.flush()
                line = self._read_line(time.monotonic() + timeout_s)
            except (BrokenPipeError, EOFError) as exc:
                self._kill()
                raise WorkerUnavailable("symbolic worker exited") from exc
            if line is None:
                self._kill()
                return None
        reply = json.loads(line)
        if "error" in reply:
            return GradeResult(pred == ref, "string", f"symbolic check failed: {reply['error']}")
        return GradeResult(reply["correct"], reply["method"], reply["detail"])

    def close(self) -> None:
        """Stop the child process (it is restarted by the next ``judge``)."""
        with self._lock:
            self._kill()

    def _ensure_started(self) -> subprocess.Popen[bytes]:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        package_root = str(Path(__file__).resolve().parents[2])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
        self._buffer = b""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "aimo_infer.evaluate.symbolic"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
        )
        try:
            line = self._read_line(time.monotonic() + self._start_timeout_s)
        except EOFError:
            line = None
        ready = json.loads(line) if line else {"ready": False, "error": "no answer at start"}
        if not ready.get("ready"):
            self._kill()
            raise WorkerUnavailable(ready.get("error", "worker failed to start"))
        return self._proc

    def _read_line(self, deadline: float) -> str | None:
        """One line from the worker, or None at the deadline; EOFError if it exited."""
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        while b"\n" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                raise EOFError("symbolic worker closed its output")
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _kill(self) -> None:
        if self._proc is None:
            return
        if self._proc.poll() is None:
            self._proc.kill()
        self._proc.wait()
        for stream in (self._proc.stdin, self._proc.stdout):
            if stream is not None:
                stream.close()
        self._proc = None
        self._buffer = b""


@functools.cache
def default_worker() -> SymbolicWorker:
    """The process-wide worker behind ``grade``; stopped at interpreter exit."""
    worker = SymbolicWorker()
    atexit.register(worker.close)
    return worker
