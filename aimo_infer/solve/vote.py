"""Majority voting over stream answers, with a deterministic tie-break.

Tie-break: among answers with the top count, the one that REACHED that count first, in the order
streams finished. Shorter solutions finish first, and in real traces right answers are about
half as long as wrong ones, so the earlier answer is the better bet; the rule is also stable
from run to run given the same finish order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

Answer = int | str


@dataclass(frozen=True)
class VoteResult:
    """The chosen answer and the full split (answers ordered by rank)."""

    answer: Answer | None
    counts: tuple[tuple[Answer, int], ...]
    num_votes: int  # streams that produced an answer
    num_missing: int  # streams that finished without one

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
