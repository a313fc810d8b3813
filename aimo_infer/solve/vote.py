"""Choosing one answer among the streams': majority vote (the default) and rules that weigh
each stream by the model's own confidence (``select``).

Tie-break: among answers with the top count, the one that REACHED that count first, in the order
streams finished. Shorter solutions finish first, and in real traces right answers are about
half as long as wrong ones, so the earlier answer is the better bet; the rule is also stable
from run to run given the same finish order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from aimo_infer.config import SELECT_RULES, ConfigError
from aimo_infer.solve.confidence import ConfidenceSummary

Answer = int | str


@dataclass(frozen=True)
class VoteResult:
    """The chosen answer and the full split (answers ordered by rank)."""

    answer: Answer | None
    counts: tuple[tuple[Answer, int], ...]
    num_votes: int  # streams that produced an answer
    num_missing: int  # streams that finished without one
    rule: str = "majority"  # the selection rule that chose
    # Per answer (same order as counts): the score the rule ranked by, for confidence rules.
    scores: tuple[tuple[Answer, float], ...] = ()

    def split(self) -> str:
        return vote_split(self.counts, self.num_missing)


def vote_split(counts: Sequence[tuple[Answer, int]], num_missing: int) -> str:
    """Human-readable vote split, e.g. ``"73 x5, 12 x2, none x1"``."""
    parts = [f"{a} x{c}" for a, c in counts]
    if num_missing:
        parts.append(f"none x{num_missing}")
    return ", ".join(parts) or "no votes"


def majority_vote(answers: Sequence[Answer | None]) -> VoteResult:
    """Vote over answers given in finish order; None (no answer) is dropped."""
    counts: dict[Answer, int] = {}
    reached_at: dict[Answer, int] = {}  # finish index at which the answer got its current count
    missing = 0
    for i, answer in enumerate(answers):
        if answer is None:
            missing += 1
            continue
        counts[answer] = counts.get(answer, 0) + 1
        reached_at[answer] = i
    ranked = sorted(counts, key=lambda a: (-counts[a], reached_at[a]))
    return VoteResult(
        answer=ranked[0] if ranked else None,
        counts=tuple((a, counts[a]) for a in ranked),
        num_votes=len(answers) - missing,
        num_missing=missing,
    )


# -- confidence-aware selection ------------------------------------------------------------------



@dataclass(frozen=True)
class Ballot:
    """One voting stream: its answer and, when the engine gave logprobs, its confidence."""

    answer: Answer | None
    confidence: ConfidenceSummary | None = None


@dataclass(frozen=True)
class SelectSettings:
    """Which rule chooses, and its knobs (see ``select``)."""

    rule: str = "majority"
    entropy_floor: float = 0.01  # entropy rule: weight = 1 / max(mean entropy, floor)
    deepconf_eta: float = 90.0  # deepconf rule: percent of answered streams kept

    def __post_init__(self) -> None:
        if self.rule not in SELECT_RULES:
            raise ConfigError(f"unknown selection rule {self.rule!r}; known: {', '.join(SELECT_RULES)}")
        if not self.entropy_floor > 0.0:
            raise ConfigError(f"entropy_floor must be > 0, got {self.entropy_floor}")
        if not 0.0 < self.deepconf_eta <= 100.0:
            raise ConfigError(f"deepconf_eta must be a percent in (0, 100], got {self.deepconf_eta}")


def select(ballots: Sequence[Ballot], settings: SelectSettings = SelectSettings()) -> VoteResult:
    """The answer the rule picks among ballots given in finish order.

    - ``majority``: the most common answer (``majority_vote``).
    - ``entropy``: votes weighted by 1 / max(mean top-k entropy, floor) (the AIMO-3 prize entries).
    - ``vote-then-confidence``: the most common answer; among tied counts the lowest mean tail
      entropy wins (the AIMO-3 runner-up).
    - ``deepconf``: keep the ``deepconf_eta`` % answered streams with the highest lowest-group
      confidence, then vote weighted by it (DeepConf offline, arXiv 2508.15260).
    A confidence rule with no stream carrying confidence (logprobs off) falls back to majority.
    """
    answers = [b.answer for b in ballots]
    answered = [(i, b) for i, b in enumerate(ballots) if b.answer is not None]
    known = [b.confidence for _, b in answered if b.confidence is not None]
    if settings.rule == "majority" or not known:
        result = majority_vote(answers)
        if settings.rule == "majority":
            return result
        return _with(result, f"majority ({settings.rule}: no confidence recorded)", ())
    missing = len(ballots) - len(answered)
    if settings.rule == "entropy":
        floor = settings.entropy_floor
        fallback = min(1.0 / max(c.mean_entropy, floor) for c in known)
        weights = [
            fallback if b.confidence is None else 1.0 / max(b.confidence.mean_entropy, floor)
            for _, b in answered
        ]
        return _weighted(answered, weights, missing, settings.rule)
    if settings.rule == "vote-then-confidence":
        worst = max(c.tail_entropy for c in known)
        tails = [worst if b.confidence is None else b.confidence.tail_entropy for _, b in answered]
        return _count_then(answered, tails, missing, settings.rule)
    # deepconf
    worst = min(c.lowest_group for c in known)
    lows = [worst if b.confidence is None else b.confidence.lowest_group for _, b in answered]
    keep = max(1, math.ceil(settings.deepconf_eta / 100.0 * len(answered)))
    order = sorted(range(len(answered)), key=lambda j: (-lows[j], answered[j][0]))[:keep]
    kept = sorted(order)  # back to finish order; counts are of the kept streams only
    return _weighted([answered[j] for j in kept], [lows[j] for j in kept], missing,
                     settings.rule, num_votes=len(answered))  # fmt: skip


def _with(result: VoteResult, rule: str, scores: tuple[tuple[Answer, float], ...]) -> VoteResult:
    return VoteResult(result.answer, result.counts, result.num_votes, result.num_missing, rule,
                      scores)  # fmt: skip


def _tally(
    answered: Sequence[tuple[int, Ballot]], weights: Sequence[float]
) -> tuple[dict[Answer, int], dict[Answer, float], dict[Answer, int]]:
    counts: dict[Answer, int] = {}
    score: dict[Answer, float] = {}
    reached_at: dict[Answer, int] = {}
    for (i, b), w in zip(answered, weights, strict=True):
        assert b.answer is not None
        counts[b.answer] = counts.get(b.answer, 0) + 1
        score[b.answer] = score.get(b.answer, 0.0) + w
        reached_at[b.answer] = i
    return counts, score, reached_at


def _weighted(
    answered: Sequence[tuple[int, Ballot]], weights: Sequence[float], missing: int, rule: str,
    num_votes: int | None = None,
) -> VoteResult:
    """Highest total weight wins; ties go to the answer that reached its total first."""
    counts, score, reached_at = _tally(answered, weights)
    return _ranked(counts, score, reached_at, lambda a: (-score[a], reached_at[a]), missing,
                   rule, num_votes if num_votes is not None else len(answered))  # fmt: skip


def _count_then(
    answered: Sequence[tuple[int, Ballot]], tails: Sequence[float], missing: int, rule: str
) -> VoteResult:
    """Most votes wins; among equal counts the lowest mean tail entropy, then finish order."""
    counts, total, reached_at = _tally(answered, tails)
    mean = {a: total[a] / counts[a] for a in counts}
    return _ranked(counts, mean, reached_at, lambda a: (-counts[a], mean[a], reached_at[a]),
                   missing, rule, len(answered))  # fmt: skip


def _ranked(
    counts: dict[Answer, int], score: dict[Answer, float], reached_at: dict[Answer, int],
    key: Callable[[Answer], tuple[float, ...]], missing: int, rule: str, num_votes: int,
) -> VoteResult:
    ranked = sorted(counts, key=key)
    return VoteResult(
        answer=ranked[0] if ranked else None,
        counts=tuple((a, counts[a]) for a in ranked),
        num_votes=num_votes,
        num_missing=missing,
        rule=rule,
        scores=tuple((a, score[a]) for a in ranked),
    )
