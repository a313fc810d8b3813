"""Confidence measures on hand-computed sequences."""

from __future__ import annotations

import math

import pytest

from aimo_infer.backends.base import TokenLogprob
from aimo_infer.solve.confidence import (
    ConfidenceSummary,
    StreamConfidence,
    entry_values,
    token_confidence,
    token_entropy,
)


def test_token_entropy_and_confidence_by_hand() -> None:
    half = math.log(0.5)
    # Two alternatives at 1/2 each: entropy ln 2, confidence -ln(1/2) = ln 2.
    assert token_entropy([half, half]) == pytest.approx(math.log(2))
    assert token_confidence([half, half]) == pytest.approx(math.log(2))
    # A sure token (p = 1) and an impossible one: entropy 0; confidence is the mean of -log p.
    assert token_entropy([0.0]) == 0.0
    assert token_confidence([0.0, -9.0]) == pytest.approx(4.5)
    # p = 0.7, 0.2, 0.1: -(0.7 ln .7 + .2 ln .2 + .1 ln .1) = 0.80182
    top = [math.log(0.7), math.log(0.2), math.log(0.1)]
    assert token_entropy(top) == pytest.approx(0.801819, abs=1e-6)
    assert token_confidence(top) == pytest.approx(-(math.log(0.014)) / 3)


def test_entry_values_use_the_alternatives_or_the_chosen_token() -> None:
    entry = TokenLogprob(3, math.log(0.5), ((3, math.log(0.5)), (9, math.log(0.25))))
    entropy, confidence = entry_values(entry)
    assert entropy == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(4))
    assert confidence == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert entry_values(TokenLogprob(1, -2.0)) == (pytest.approx(2 * math.exp(-2.0)), 2.0)


def feed(tracker: StreamConfidence, confidences: list[float], entropies: list[float]) -> None:
    for c, h in zip(confidences, entropies, strict=True):
        tracker.add_values(h, c)


def test_sliding_window_lowest_and_bottom_groups_by_hand() -> None:
    tracker = StreamConfidence(window=3, tail=2)
    confidences = [3.0, 3.0, 3.0, 0.0, 3.0, 3.0, 6.0, 6.0]
    entropies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    feed(tracker, confidences[:2], entropies[:2])
    assert not tracker.window_full
    assert tracker.window_confidence == 3.0
    feed(tracker, confidences[2:], entropies[2:])
    # Windows of 3 end at tokens 3..8: means 3, 2, 2, 2, 4, 5.
    s = tracker.summary()
    assert s.tokens == 8
    assert s.lowest_group == pytest.approx(2.0)
    assert s.lows == ((3, 3.0), (4, 2.0))  # a new low only when strictly lower
    assert s.bottom_group == pytest.approx(2.0)  # ceil(10% of 6) = 1 group: the lowest
    assert s.mean_confidence == pytest.approx(sum(confidences) / 8)
    assert s.mean_entropy == pytest.approx(sum(entropies) / 8)
    assert s.tail_entropy == pytest.approx((0.7 + 0.8) / 2)
    assert tracker.window_confidence == pytest.approx(5.0)
    assert s.first_below(2.5) == 4
    assert s.first_below(3.5) == 3
    assert s.first_below(2.0) is None


def test_bottom_ten_percent_is_the_mean_of_the_lowest_groups() -> None:
    tracker = StreamConfidence(window=1, tail=5)
    values = [float(v) for v in range(1, 21)]  # 20 one-token groups: 1..20
    feed(tracker, values, [0.0] * 20)
    s = tracker.summary()
    assert s.bottom_group == pytest.approx(1.5)  # lowest 2 of 20: 1 and 2
    assert s.lowest_group == 1.0


def test_a_stream_shorter_than_the_window_is_one_group() -> None:
    tracker = StreamConfidence(window=10, tail=4)
    feed(tracker, [1.0, 2.0, 6.0], [0.5, 0.5, 2.0])
    s = tracker.summary()
    assert s.lowest_group == pytest.approx(3.0)
    assert s.bottom_group == pytest.approx(3.0)
    assert s.lows == ()
    assert s.first_below(100.0) is None  # no full window: an online stop never saw one


def test_no_tokens_gives_zeros_and_bad_sizes_are_refused() -> None:
    s = StreamConfidence(window=4, tail=4).summary()
    assert (s.tokens, s.mean_entropy, s.lowest_group) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="window and tail"):
        StreamConfidence(window=0)


def test_summary_round_trips_through_its_record() -> None:
    tracker = StreamConfidence(window=2, tail=2)
    feed(tracker, [1.0, 3.0, 0.5, 0.25], [0.1, 0.2, 0.3, 0.4])
    s = tracker.summary()
    again = ConfidenceSummary.from_record(s.to_record())
    assert again == s
