"""Tool-integrated reasoning: find the end of a code block in streamed text, format its output.

Pure functions and one small incremental watcher; the controller pauses a stream when the
watcher reports a closed block, runs the code, appends ``format_output(...)`` and resumes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sandbox.api import ExecResult


@dataclass(frozen=True)
class ToolFormat:
    """How a model marks code: ``open``...``close``; ``stop`` are the engine stop strings."""

    name: str
    open: str
    close: str
    stop: tuple[str, ...]

    @property
    def trigger_chars(self) -> frozenset[str]:
        """Characters whose arrival may complete a block: a cheap filter before searching."""
        return frozenset(self.close[-1:])


# ```python ... ``` fences. Engines cannot stop on the closing fence (it also opens blocks), so
# the stop string is the model's own "```output" habit and the harness finds the close in text.
FENCE = ToolFormat("fence", "```python", "```", ("```output",))
# <tool_call> ... </tool_call> (the winning AIMO-2 model); code inside may carry ``` fences too.
TOOL_CALL = ToolFormat("toolcall", "<tool_call>", "</tool_call>", ("</tool_call>",))
NO_TOOLS = ToolFormat("none", "", "", ())

TOOL_FORMATS: dict[str, ToolFormat] = {f.name: f for f in (FENCE, TOOL_CALL, NO_TOOLS)}


@dataclass(frozen=True)
class CodeBlock:
    """A closed code block: the code, and where the block ends in the text."""

    code: str
    start: int
    end: int  # index just past the closing marker


# A model that writes an output block itself, after no code block of the format, imagined the
# output. A block tagged as Python in another spelling just before it is run; without one, the
# model is told that no code ran (and the call counts toward the limit, so it cannot loop).
LOOSE_PYTHON_TAGS = frozenset({"py", "py3", "python3", "ipython", "python"})
NO_CODE_FEEDBACK = "No code ran: put the code to run in a ```python block before its output."


def output_markers(fmt: ToolFormat) -> tuple[str, ...]:
    """Stop strings that open a model-written output block (not the close of a code block)."""
    return tuple(stop for stop in fmt.stop if stop != fmt.close)


def loose_code_block(text: str, start: int, end: int) -> CodeBlock | None:
    """A fenced block tagged as Python in another spelling (py, python3) that ends the span
    ``text[start:end]`` (trailing blank lines aside), or None."""
    body_end = len(text[start:end].rstrip()) + start
    if body_end - start < 3 or text[body_end - 3 : body_end] != "```":
        return None
    open_at = text.rfind("```", start, body_end - 3)
    if open_at < 0:
        return None
    newline = text.find("\n", open_at)
    if newline < 0 or newline > body_end - 3:
        return None
    if text[open_at + 3 : newline].strip().lower() not in LOOSE_PYTHON_TAGS:
        return None
    code = text[newline + 1 : body_end - 3]
    return CodeBlock(code if code.endswith("\n") or not code else code + "\n", open_at, body_end)


_INNER_FENCE = re.compile(r"^\s*```[a-zA-Z0-9_+-]*[ \t]*\n?|\n?```\s*$")


def find_code_block(text: str, fmt: ToolFormat, start: int = 0) -> CodeBlock | None:
    """Return the first closed code block that opens at or after ``start``, or None."""
    if not fmt.open:
        return None
    open_at = text.find(fmt.open, start)
    if open_at < 0:
        return None
    body_at = open_at + len(fmt.open)
    if fmt is FENCE or fmt.close == "```":
        # The fence's language tag ends at the newline; the close must start a line.
        newline = text.find("\n", body_at)
        if newline < 0:
            return None
        close_at = text.find("\n" + fmt.close, newline)
        if close_at < 0:
            return None
        return CodeBlock(text[newline + 1 : close_at + 1], open_at, close_at + 1 + len(fmt.close))
    close_at = text.find(fmt.close, body_at)
    if close_at < 0:
        return None
    code = _INNER_FENCE.sub("", text[body_at:close_at].strip("\n"))
    return CodeBlock(code + "\n" if code and not code.endswith("\n") else code, open_at,
                     close_at + len(fmt.close))


class CodeBlockWatcher:
    """Finds closed code blocks in a growing text without rescanning it from the start."""

    __slots__ = ("_fmt", "_scan_from", "_triggers")

    def __init__(self, fmt: ToolFormat, scan_from: int = 0) -> None:
        self._fmt = fmt
        self._triggers = fmt.trigger_chars
        self._scan_from = scan_from

    def check(self, text: str, delta: str) -> CodeBlock | None:
        """Call after appending ``delta`` to ``text``; returns a block once it is closed."""
        if not self._fmt.open:
            return None
        for ch in self._triggers:
            if ch in delta:
                break
        else:
            return None
        block = find_code_block(text, self._fmt, self._scan_from)
        if block is None:
            # Nothing can open before the last partial marker: skip the settled prefix next time.
            pending = text.find(self._fmt.open, self._scan_from)
            if pending < 0:
                self._scan_from = max(self._scan_from, len(text) - len(self._fmt.open))
            else:
                self._scan_from = pending
        return block


_TRACEBACK_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*$\n?(?:^ {4,}.*$\n?)*', re.MULTILINE)


def shorten_traceback(stderr: str) -> str:
    """Keep what a model can act on: the failing source line and the exception, not the frames."""
    if "Traceback (most recent call last)" not in stderr:
        return stderr
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    tail = lines[-1]
    # The line of user code (last frame's source line), if the traceback shows it.
    source = ""
    for i in range(len(lines) - 2, 0, -1):
        if lines[i].lstrip().startswith("File "):
            if i + 1 < len(lines) - 1:
                source = lines[i + 1].strip()
            break
    return f"{source}\n{tail}" if source and not source.startswith(("^", "~")) else tail


def truncate_middle(text: str, max_chars: int, marker: str = "<output cut>") -> str:
    """Head and tail of ``text`` with ``marker`` between, at most about ``max_chars`` kept."""
    if len(text) <= max_chars:
        return text
    head = max_chars * 2 // 3
    tail = max_chars - head
    return f"{text[:head]}\n{marker}\n{text[len(text) - tail:]}" if tail else text[:head] + marker


_STATUS_MESSAGES = {
    "timeout": "Timed out",
    "memory": "Memory limit exceeded",
    "crashed": "Crashed",
}


def execution_feedback(result: ExecResult, max_chars: int) -> str:
    """What the model is shown for one cell: output, a short error, or the limit it hit."""
    if result.status in _STATUS_MESSAGES:
        shown = result.stdout.strip()
        message = _STATUS_MESSAGES[result.status]
        body = f"{truncate_middle(shown, max_chars)}\n{message}" if shown else message
    else:
        err = shorten_traceback(result.stderr) if result.status == "error" else result.stderr
        body = truncate_middle((result.stdout + err).strip("\n"), max_chars)
    return body


def format_output(feedback: str) -> str:
    """The block appended after a code block, as the winning entry did: ```output ... ```."""
    return f"\n```output\n{feedback}\n```\n"


def code_limit_reached(code_calls: int, max_code_calls: int) -> bool:
    """A further code block past the limit ends the stream without running."""
    return code_calls >= max_code_calls
