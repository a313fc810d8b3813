import pytest

from aimo_infer.solve.confidence import ConfidenceSummary
from aimo_infer.solve.vote import Ballot, SelectSettings, majority_vote, select


def test_majority_picks_most_common() -> None:
    result = majority_vote([1, 2, 2, 3, 2, 1])
    assert result.answer == 2
    assert result.counts[0] == (2, 3)
    assert result.num_votes == 6


def test_missing_answers_are_dropped_not_counted() -> None:
    result = majority_vote([None, None, 7, None])
    assert result.answer == 7
    assert result.num_missing == 3
    assert result.num_votes == 1
    assert result.split() == "7 x1, none x3"


def test_no_answers_gives_none() -> None:
    result = majority_vote([None, None])
    assert result.answer is None
    assert result.counts == ()
    assert result.split() == "none x2"


def test_tie_goes_to_the_answer_that_reached_the_count_first() -> None:
    # A reaches 2 at position 3, B at position 2: B got there first.
    assert majority_vote(["A", "B", "B", "A"]).answer == "B"
    # Reversed arrival: A wins.
    assert majority_vote(["B", "A", "A", "B"]).answer == "A"


def test_tie_break_is_independent_of_answer_value() -> None:
    assert majority_vote([900, 5]).answer == 900
    assert majority_vote([5, 900]).answer == 5


def test_mixed_int_and_string_answers() -> None:
    result = majority_vote(["\\frac{1}{2}", 3, "\\frac{1}{2}"])
    assert result.answer == "\\frac{1}{2}"
    assert dict(result.counts) == {"\\frac{1}{2}": 2, 3: 1}


# -- confidence-aware selection --------------------------------------------------------------------



def conf(entropy: float = 1.0, tail: float = 1.0, lowest: float = 1.0) -> ConfidenceSummary:
    return ConfidenceSummary(tokens=100, mean_entropy=entropy, tail_entropy=tail,
                             mean_confidence=lowest, lowest_group=lowest, bottom_group=lowest,
                             window=16, tail=8)  # fmt: skip


def test_majority_is_the_default_rule_and_ignores_confidence() -> None:
    ballots = [Ballot(1, conf(entropy=0.01)), Ballot(2, conf(entropy=5)), Ballot(2, conf(entropy=5))]
    result = select(ballots)
    assert result.answer == 2 and result.rule == "majority"
    assert result == majority_vote([1, 2, 2])


def test_entropy_rule_weighs_by_inverse_entropy_with_a_floor() -> None:
    # Answer 7: one sure stream (entropy 0.001, floored to 0.1: weight 10); answer 3: three
    # streams at entropy 0.5 (weight 2 each, 6 in all). The sure stream wins.
    ballots = [Ballot(3, conf(0.5)), Ballot(7, conf(0.001)), Ballot(3, conf(0.5)), Ballot(3, conf(0.5))]
    result = select(ballots, SelectSettings("entropy", entropy_floor=0.1))
    assert result.answer == 7
    assert dict(result.scores) == {7: pytest.approx(10.0), 3: pytest.approx(6.0)}
    assert dict(result.counts) == {7: 1, 3: 3}
    # A higher floor caps the sure stream at weight 1/0.4 = 2.5 < 6.
    assert select(ballots, SelectSettings("entropy", entropy_floor=0.4)).answer == 3


def test_vote_then_confidence_counts_first_and_breaks_ties_by_tail_entropy() -> None:
    ballots = [Ballot(1, conf(tail=0.9)), Ballot(2, conf(tail=0.2)), Ballot(1, conf(tail=0.7)),
               Ballot(2, conf(tail=0.4)), Ballot(5, conf(tail=0.0))]  # fmt: skip
    result = select(ballots, SelectSettings("vote-then-confidence"))
    assert result.answer == 2  # 1 and 2 tie at 2 votes; 2's mean tail entropy 0.3 < 0.8
    assert dict(result.scores)[1] == pytest.approx(0.8)
    ballots.append(Ballot(1, conf(tail=3.0)))
    assert select(ballots, SelectSettings("vote-then-confidence")).answer == 1  # count first


def test_deepconf_keeps_the_most_confident_streams_then_weighs_them() -> None:
    # Four streams say 9 with low confidence, two say 4 with high confidence.
    ballots = [Ballot(9, conf(lowest=1.0)) for _ in range(4)]
    ballots += [Ballot(4, conf(lowest=5.0)), Ballot(4, conf(lowest=6.0)), Ballot(None)]
    # eta 50: keep ceil(0.5 * 6) = 3 streams: both 4s and the first 9: 11 against 1.
    result = select(ballots, SelectSettings("deepconf", deepconf_eta=50))
    assert result.answer == 4
    assert dict(result.counts) == {4: 2, 9: 1}
    assert dict(result.scores) == {4: pytest.approx(11.0), 9: pytest.approx(1.0)}
    assert result.num_votes == 6 and result.num_missing == 1
    # eta 100 keeps everything: 4 * 1.0 against 11: still 4; plain majority says 9.
    assert select(ballots, SelectSettings("deepconf", deepconf_eta=100)).answer == 4
    assert select(ballots).answer == 9


def test_confidence_rules_without_confidence_fall_back_to_majority() -> None:
    ballots = [Ballot(1), Ballot(2), Ballot(2)]
    for rule in ("entropy", "vote-then-confidence", "deepconf"):
        result = select(ballots, SelectSettings(rule))
        assert result.answer == 2
        assert result.rule.startswith("majority") and rule in result.rule


def test_a_stream_without_confidence_gets_the_weakest_weight() -> None:
    ballots = [Ballot(1, conf(entropy=0.5)), Ballot(2), Ballot(2, conf(entropy=2.0))]
    result = select(ballots, SelectSettings("entropy"))
    # 2: 0.5 (own) + 0.5 (weakest known weight) = 1.0 against 1's 2.0
    assert result.answer == 1
    assert dict(result.scores)[2] == pytest.approx(1.0)


def test_select_settings_reject_bad_values() -> None:
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        SelectSettings("best")
    with pytest.raises(ValueError, match="entropy_floor"):
        SelectSettings("entropy", entropy_floor=0.0)
    with pytest.raises(ValueError, match="deepconf_eta"):
        SelectSettings("deepconf", deepconf_eta=0.0)
