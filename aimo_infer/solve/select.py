"""What the solve loop does with confidence: the settings read once from the config, and one
problem's online stop state (the warmup streams' lowest-group confidences, the threshold).

The rules themselves are pure functions elsewhere: selection in ``vote.select``, the online stop
in ``policies.ConfidenceStop``, the measures in ``confidence``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aimo_infer.config import CONFIDENCE_STOPS, ConfigError, SolveConfig
from aimo_infer.solve.confidence import ConfidenceSummary, StreamConfidence
from aimo_infer.solve.policies import ConfidenceStop
from aimo_infer.solve.vote import SelectSettings

DEFAULT_LOGPROBS = 5  # top-k asked for when a rule needs confidence and the config says 0


@dataclass(frozen=True)
class ConfidencePlan:
    """The selection rule, the online stop (None: none) and what to ask the engine for."""

    select: SelectSettings = field(default_factory=SelectSettings)
    stop: ConfidenceStop | None = None
    logprobs: int = 0  # top-k per token asked of the engine (0: none)
    window: int = 2048
    tail: int = 256

    @classmethod
    def from_config(cls, solve: SolveConfig) -> ConfidencePlan:
        """Read and check ``solve.select`` and ``solve.confidence``; errors name the key."""
        c = solve.confidence
        for key, value in (("logprobs", c.logprobs), ("window", c.window), ("tail", c.tail)):
            if value < (0 if key == "logprobs" else 1):
                raise ConfigError(f"solve.confidence.{key} must be >= "
                                 f"{0 if key == 'logprobs' else 1}, got {value}")  # fmt: skip
        if c.stop not in CONFIDENCE_STOPS:
            raise ConfigError(f"solve.confidence.stop must be one of {', '.join(CONFIDENCE_STOPS)}, "
                             f"got {c.stop!r}")  # fmt: skip
        select = SelectSettings(solve.select, c.entropy_floor, c.deepconf_eta)
        stop = None
        if c.stop == "deepconf":
            stop = ConfidenceStop(c.stop_threshold, c.stop_warmup, c.stop_percentile)
        needed = select.rule != "majority" or stop is not None
        logprobs = c.logprobs or (DEFAULT_LOGPROBS if needed else 0)
        return cls(select, stop, logprobs, c.window, c.tail)

    def tracker(self) -> StreamConfidence | None:
        """A fresh running measure for a stream, or None when logprobs are off."""
        return StreamConfidence(self.window, self.tail) if self.logprobs > 0 else None


@dataclass
class OnlineStop:
    """One problem's online stop: finished streams set the threshold, running ones are judged."""

    rule: ConfidenceStop | None
    warmup_lows: list[float] = field(default_factory=list)

    def finished(self, summary: ConfidenceSummary | None, votes: bool) -> None:
        """A stream ended: a voting one with confidence counts towards the warmup."""
        if votes and summary is not None and summary.tokens > 0:
            self.warmup_lows.append(summary.lowest_group)

    @property
    def threshold(self) -> float | None:
        return None if self.rule is None else self.rule.threshold_from(self.warmup_lows)

    def check(self, tracker: StreamConfidence) -> str | None:
        """Why this running stream should stop now, or None."""
        threshold = self.threshold
        if self.rule is None or not self.rule.fired(
            tracker.window_full, tracker.window_confidence, threshold
        ):
            return None
        return (f"window confidence {tracker.window_confidence:.3f} < threshold {threshold:.3f} "
                f"at token {tracker.tokens}")  # fmt: skip
