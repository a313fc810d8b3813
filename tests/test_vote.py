from aimo_infer.solve.vote import majority_vote


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
