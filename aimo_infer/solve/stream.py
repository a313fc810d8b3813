"""One solution stream: its status, text so far and what happened to it (cf. a Sequence)."""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Literal

from aimo_infer.solve.vote import Answer

StreamEnd = Literal[
    "stop", "length", "cancelled", "deadline", "code_limit", "error", "low_confidence"
]
"""stop: the model ended; length: token limit; cancelled: an early-stop policy fired; deadline:
the problem or stream deadline cut it; code_limit: a code block past the limit; error: engine;
low_confidence: the online confidence stop cut it (``end_detail`` says why; it does not vote)."""


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
    end: StreamEnd | None = None
    error: str | None = None
    answer: Answer | None = None
    started_at: float = 0.0
    finished_at: float | None = None
    first_token_at: float | None = None
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

    def to_record(self) -> dict[str, object]:
        """A JSON-ready summary (the full text included) for traces and reports."""
        record = asdict(self)
        record["status"] = self.status.value
        record["elapsed_s"] = self.elapsed_s
        return record
