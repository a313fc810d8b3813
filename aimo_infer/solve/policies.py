"""Early-stopping policies: pure rules over the answers of finished streams, composable.

A policy sees the answers in the order streams finished (None for a stream without an answer)
and the number of streams launched, and returns why the problem should stop, or None.
The problem deadline is not a policy: the controller enforces it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from aimo_infer.config import ConfigError
from aimo_infer.solve.vote import Answer


class StopPolicy(Protocol):
    def fired(self, answers: Sequence[Answer | None], num_streams: int) -> str | None: ...


@dataclass(frozen=True)
class Agreement:
    """Stop when ``k`` answers agree among the first ``within`` finished streams (all if None)."""

    k: int
    within: int | None = None

    def fired(self, answers: Sequence[Answer | None], num_streams: int) -> str | None:
        window = answers if self.within is None else answers[: self.within]
        counts = Counter(a for a in window if a is not None)
        if not counts:
            return None
        answer, top = counts.most_common(1)[0]
        if top >= self.k:
            scope = f" of the first {self.within}" if self.within is not None else ""
            return f"agreement: {top}{scope} agree on {answer}"
        return None


@dataclass(frozen=True)
class Quorum:
    """Stop when ``q`` streams have finished (or all of them, if fewer were launched)."""

    q: int

    def fired(self, answers: Sequence[Answer | None], num_streams: int) -> str | None:
        need = min(self.q, num_streams)
        return f"quorum: {len(answers)} of {num_streams} finished" if len(answers) >= need else None


@dataclass(frozen=True)
class Leader:
    """Stop when the leading answer can no longer be overtaken: the runner-up's count plus the
    streams still running is at most the leader's (a tie then goes to the leader, which reached
    its count first). The AIMO-3 runner-up's rule."""

    def fired(self, answers: Sequence[Answer | None], num_streams: int) -> str | None:
        counts = Counter(a for a in answers if a is not None).most_common(2)
        if not counts:
            return None
        leader, top = counts[0]
        second = counts[1][1] if len(counts) > 1 else 0
        running = max(0, num_streams - len(answers))
        if second + running <= top:
            return f"leader: {leader} has {top}, the runner-up {second} with {running} running"
        return None


@dataclass(frozen=True)
class AnyOf:
    """Stop when any of the rules fires; the first one's reason is reported."""

    rules: tuple[StopPolicy, ...]

    def fired(self, answers: Sequence[Answer | None], num_streams: int) -> str | None:
        for rule in self.rules:
            reason = rule.fired(answers, num_streams)
            if reason is not None:
                return reason
        return None


PRESETS: dict[str, str] = {
    # The winning AIMO-2 entry: stop once 4 of the first 5 answers agree, or 10 of 12 finished.
    "nemo": "agree=4of5,quorum=10",
    # The rule as stated by our users: stop early when 10 of 12 answers agree.
    "agree10": "agree=10",
    # AIMO-2 runner-up: 4 of 4 agree, or 5 of the first 7.
    "imagination": "agree=4of4,agree=5of7",
    # AIMO-3 public baseline: 4 agreeing answers.
    "agree4": "agree=4",
    # Wait for every stream (only the deadline stops early).
    "all": "",
}

_RULE = re.compile(r"^(agree)=(\d+)(?:of(\d+))?$|^(quorum)=(\d+)$|^(leader)$")


def parse_policy(spec: str) -> AnyOf:
    """Parse a preset name or rules like ``"agree=4of5,quorum=10"``; errors name the bad part."""
    spec = PRESETS.get(spec, spec)
    rules: list[StopPolicy] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        m = _RULE.match(part)
        if m is None:
            presets = ", ".join(PRESETS)
            raise ConfigError(
                f"bad stop policy {part!r}: use a preset ({presets}) or rules like "
                "'agree=4of5,quorum=10' (also: leader)"
            )
        if m.group(6):
            rules.append(Leader())
        elif m.group(1):
            k, within = int(m.group(2)), int(m.group(3)) if m.group(3) else None
            if k < 1 or (within is not None and within < k):
                raise ConfigError(f"bad stop policy {part!r}: need 1 <= k <= window")
            rules.append(Agreement(k, within))
        else:
            q = int(m.group(5))
            if q < 1:
                raise ConfigError(f"bad stop policy {part!r}: quorum must be >= 1")
            rules.append(Quorum(q))
    return AnyOf(tuple(rules))


# -- stopping a stream on low confidence (DeepConf online) ---------------------------------------



@dataclass(frozen=True)
class ConfidenceStop:
    """DeepConf online (arXiv 2508.15260, alg. 2): a running stream whose sliding-window
    confidence falls below a threshold is stopped (and does not vote). The threshold is given,
    or the ``percentile`` of the lowest-group confidences of the first ``warmup`` streams of the
    problem to finish (10: DeepConf-high keeps 90%; 90: DeepConf-low keeps 10%). Only a full
    window is judged."""

    threshold: float | None = None
    warmup: int = 4
    percentile: float = 10.0

    def __post_init__(self) -> None:
        if self.warmup < 1:
            raise ConfigError(f"confidence stop warmup must be >= 1, got {self.warmup}")
        if not 0.0 <= self.percentile <= 100.0:
            raise ConfigError(f"confidence stop percentile must be in [0, 100], got {self.percentile}")

    def threshold_from(self, warmup_lows: Sequence[float]) -> float | None:
        """The threshold, given the lowest-group confidences of the problem's finished streams
        in finish order; None while the warmup is not complete."""
        if self.threshold is not None:
            return self.threshold
        if len(warmup_lows) < self.warmup:
            return None
        return percentile(warmup_lows[: self.warmup], self.percentile)

    def fired(self, window_full: bool, window_confidence: float, threshold: float | None) -> bool:
        return threshold is not None and window_full and window_confidence < threshold


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile with linear interpolation between ranks (numpy's default)."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("percentile of no values")
    at = (len(ordered) - 1) * q / 100.0
    low = int(at)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)
