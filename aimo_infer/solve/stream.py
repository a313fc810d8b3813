"""One solution stream: its status, text so far and what happened to it (cf. a Sequence)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Literal

from aimo_infer.solve.vote import Answer

StreamEnd = Literal[
    "stop", "length", "cancelled", "deadline", "code_limit", "error", "low_confidence"
]
"""stop: the model ended; length: token limit; cancelled: an early-stop policy fired; deadline:
the problem or stream deadline cut it; code_limit: a code block past the limit; error: engine;
low_confidence: the online confidence stop cut it (``end_detail`` says why; it does not vote)."""

# Streams whose answer votes: those that ended by themselves, and those cut by a deadline
# (their partial text is searched). Streams cancelled by a policy do not vote.
VOTING_ENDS: frozenset[str] = frozenset({"stop", "length", "code_limit", "deadline", "error"})

# A problem's stop reasons other than an early-stop policy's own (which names the policy).
ALL_FINISHED = "all finished"
DEADLINE = "deadline"


def votes(end: str | None) -> bool:
    """Whether a stream that ended with ``end`` votes."""
    return end in VOTING_ENDS


def stopped_early(stop_reason: str) -> bool:
    """Whether a problem's streams were stopped by a policy while some still ran."""
    return stop_reason not in (ALL_FINISHED, DEADLINE)


class StreamStatus(enum.Enum):
    WAITING = "waiting"
    GENERATING = "generating"
    EXECUTING = "executing"
    FINISHED = "finished"


@dataclass
class CodeCall:
    """One executed cell and what the model was shown."""

    code: str
    status: str
    feedback: str
    elapsed_s: float


@dataclass
class Stream:
    """A seeded generation for one problem; grows by segments between code cells."""

    index: int
    seed: int
    request_id: str = ""
    status: StreamStatus = StreamStatus.WAITING
    text: str = ""  # everything after the prompt: model text and appended outputs
    tokens: int = 0  # generated tokens over all segments (appended outputs excluded)
    segments: int = 0  # engine requests made
    code_calls: list[CodeCall] = field(default_factory=list)
    hidden: list[tuple[int, int]] = field(default_factory=list)  # code and output spans of text
    end: StreamEnd | None = None
    error: str | None = None
    harness_bug: bool = False  # the error was raised by the harness's own code (solve.faults)
    answer: Answer | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    confidence: dict[str, object] | None = None  # ConfidenceSummary record, with logprobs on
    end_detail: str | None = None  # why it ended, where ``end`` alone does not say

    @property
    def finished(self) -> bool:
        return self.status is StreamStatus.FINISHED

    @property
    def num_code_calls(self) -> int:
        return len(self.code_calls)

    @property
    def elapsed_s(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at
