"""How sure a stream is, from the model's own token probabilities, updated in O(1) per token.

Per token, from its top-k log-probabilities (``TokenLogprob.top``):
- entropy: ``-sum p log p`` over the k alternatives (the AIMO-3 prize entries' top-5 entropy);
- confidence: minus the mean of the k log-probabilities (DeepConf, arXiv 2508.15260, eq. 2):
  high when the model puts its mass on one token, low when it hesitates.

Per stream: mean entropy, tail entropy (last ``tail`` tokens, as the AIMO-3 runner-up), the
DeepConf group confidence (mean token confidence over a sliding window of ``window`` tokens),
its lowest value (a stream shorter than the window has one group: all its tokens) and the mean
of its lowest 10% ("bottom-10%"). ``lows`` lists each new lowest full-window value with the
token count where it fell, so an online stop at any threshold can be replayed from a record.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aimo_infer.backends.base import TokenLogprob

DEFAULT_WINDOW = 2048  # DeepConf's group size
DEFAULT_TAIL = 256  # the AIMO-3 runner-up's tail
BOTTOM_FRACTION = 0.1


def token_entropy(top: Sequence[float]) -> float:
    """Entropy (nats) of one token over its top-k log-probabilities, not renormalised."""
    return -sum(math.exp(lp) * lp for lp in top)


def token_confidence(top: Sequence[float]) -> float:
    """DeepConf token confidence: minus the mean of the top-k log-probabilities."""
    return -sum(top) / len(top) if top else 0.0


def entry_values(entry: TokenLogprob) -> tuple[float, float]:
    """(entropy, confidence) of one generated token; with no alternatives, the chosen one's."""
    top = [lp for _, lp in entry.top] or [entry.logprob]
    return token_entropy(top), token_confidence(top)


@dataclass(frozen=True)
class ConfidenceSummary:
    """A stream's confidence measures, for records, traces and selection (JSON-ready)."""

    tokens: int
    mean_entropy: float
    tail_entropy: float
    mean_confidence: float
    lowest_group: float  # lowest sliding-window group confidence
    bottom_group: float  # mean of the lowest 10% of the group confidences
    window: int
    tail: int
    lows: tuple[tuple[int, float], ...] = ()  # (tokens so far, new lowest full-window value)

    def to_record(self) -> dict[str, Any]:
        record = asdict(self)
        record["lows"] = [[n, round(v, 6)] for n, v in self.lows]
        return record

    @classmethod
    def from_record(cls, data: dict[str, Any]) -> ConfidenceSummary:
        data = dict(data)
        data["lows"] = tuple((int(n), float(v)) for n, v in data.get("lows", ()))
        return cls(**data)

    def first_below(self, threshold: float) -> int | None:
        """Token count at which the sliding-window confidence first fell below ``threshold``
        (what an online stop at that threshold would have seen), or None if it never did."""
        for n, value in self.lows:
            if value < threshold:
                return n
        return None


@dataclass
class StreamConfidence:
    """Running confidence of one stream: ``add`` each generated token, read at any time."""

    window: int = DEFAULT_WINDOW
    tail: int = DEFAULT_TAIL
    tokens: int = 0
    _entropy_sum: float = 0.0
    _confidence_sum: float = 0.0
    _tail: deque[float] = field(default_factory=deque)
    _tail_sum: float = 0.0
    _window: deque[float] = field(default_factory=deque)
    _window_sum: float = 0.0
    _groups: array[float] = field(default_factory=lambda: array("d"))
    _lows: list[tuple[int, float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.window < 1 or self.tail < 1:
            raise ValueError(f"window and tail must be >= 1, got {self.window} and {self.tail}")

    def add(self, entry: TokenLogprob) -> None:
        self.add_values(*entry_values(entry))

    def add_values(self, entropy: float, confidence: float) -> None:
        """One token's entropy and confidence."""
        self.tokens += 1
        self._entropy_sum += entropy
        self._confidence_sum += confidence
        self._tail.append(entropy)
        self._tail_sum += entropy
        if len(self._tail) > self.tail:
            self._tail_sum -= self._tail.popleft()
        self._window.append(confidence)
        self._window_sum += confidence
        if len(self._window) > self.window:
            self._window_sum -= self._window.popleft()
        if len(self._window) == self.window:
            group = self._window_sum / self.window
            self._groups.append(group)
            if not self._lows or group < self._lows[-1][1]:
                self._lows.append((self.tokens, group))

    @property
    def window_full(self) -> bool:
        return len(self._window) == self.window

    @property
    def window_confidence(self) -> float:
        """Mean confidence over the last ``window`` tokens (fewer at the start)."""
        return self._window_sum / len(self._window) if self._window else 0.0

    @property
    def lowest_group(self) -> float:
        if not self._groups:
            return self.window_confidence  # shorter than the window: one group, all tokens
        return self._lows[-1][1]

    def summary(self) -> ConfidenceSummary:
        groups = self._groups if self._groups else array("d", [self.window_confidence])
        bottom = heapq.nsmallest(max(1, math.ceil(BOTTOM_FRACTION * len(groups))), groups)
        n = max(self.tokens, 1)
        return ConfidenceSummary(
            tokens=self.tokens,
            mean_entropy=self._entropy_sum / n,
            tail_entropy=self._tail_sum / len(self._tail) if self._tail else 0.0,
            mean_confidence=self._confidence_sum / n,
            lowest_group=self.lowest_group,
            bottom_group=sum(bottom) / len(bottom),
            window=self.window,
            tail=self.tail,
            lows=tuple(self._lows),
        )
