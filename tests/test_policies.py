import pytest

from aimo_infer.solve.policies import (
    PRESETS,
    Agreement,
    AnyOf,
    ConfidenceStop,
    Leader,
    Quorum,
    parse_policy,
    percentile,
)


def test_agreement_fires_at_k() -> None:
    rule = Agreement(3)
    assert rule.fired([1, 2, 1], 12) is None
    assert rule.fired([1, 2, 1, 1], 12) is not None


def test_agreement_within_first_m_ignores_later_answers() -> None:
    rule = Agreement(4, within=5)
    assert rule.fired([1, 1, 2, 3, 1, 1, 1], 12) is None  # only 3 of the first 5 agree
    assert rule.fired([1, 1, 2, 1, 1], 12) is not None


def test_agreement_ignores_missing_answers() -> None:
    assert Agreement(2).fired([None, None, None], 12) is None


def test_quorum_counts_finished_streams_and_caps_at_n() -> None:
    assert Quorum(10).fired([None] * 9, 12) is None
    assert Quorum(10).fired([None] * 10, 12) is not None
    assert Quorum(10).fired([1, 2, 3], 3) is not None  # fewer streams than the quorum


def test_anyof_reports_first_rule_that_fires() -> None:
    policy = AnyOf((Agreement(4), Quorum(3)))
    reason = policy.fired([1, 2, 3], 12)
    assert reason is not None and reason.startswith("quorum")


def test_presets_parse_and_user_rule_is_named() -> None:
    for name in PRESETS:
        parse_policy(name)
    agree10 = parse_policy("agree10")
    assert agree10.fired([5] * 9 + [4], 12) is None
    assert agree10.fired([5] * 10, 12) is not None
    nemo = parse_policy("nemo")
    assert nemo.fired([7, 7, 3, 7, 7], 12) is not None
    assert nemo.fired([7, 7, 3, 7, 2], 12) is None


def test_empty_policy_never_fires() -> None:
    assert parse_policy("all").fired([1] * 12, 12) is None


@pytest.mark.parametrize("spec", ["agree=0", "agree=5of3", "quorum=0", "majority", "agree=x"])
def test_bad_policy_specs_are_rejected_with_the_bad_part(spec: str) -> None:
    with pytest.raises(ValueError, match="bad stop policy"):
        parse_policy(spec)


def test_leader_fires_once_the_runner_up_cannot_catch_up() -> None:
    rule = Leader()
    # 12 streams, 5 finished: 3 for 7, 2 for 9, 7 still running: 2 + 7 > 3.
    assert rule.fired([7, 9, 7, 9, 7], 12) is None
    # 4 streams, 3 finished: 7 x2, 9 x1, one running: 1 + 1 <= 2 fires.
    reason = rule.fired([7, 9, 7], 4)
    assert reason is not None and reason.startswith("leader: 7 has 2")
    # Missing answers count as finished, not as votes.
    assert rule.fired([None, 7], 4) is None  # 0 + 2 running > 1
    assert rule.fired([None, None, 7], 4) is not None  # 0 + 1 <= 1: a tie goes to the leader
    assert rule.fired([None, None], 2) is None  # no leader, no stop


def test_leader_parses_and_composes() -> None:
    policy = parse_policy("agree=4of5,leader")
    assert isinstance(policy.rules[1], Leader)
    assert policy.fired([3, 3], 3) is not None  # 0 + 1 <= 2
    with pytest.raises(ValueError, match="also: leader"):
        parse_policy("leaders")


def test_percentile_interpolates_like_numpy() -> None:
    values = [4.0, 1.0, 3.0, 2.0]
    assert percentile(values, 0) == 1.0
    assert percentile(values, 100) == 4.0
    assert percentile(values, 50) == pytest.approx(2.5)
    assert percentile(values, 10) == pytest.approx(1.3)  # 1 + 0.3 * (2 - 1)
    with pytest.raises(ValueError):
        percentile([], 50)


def test_confidence_stop_threshold_waits_for_the_warmup() -> None:
    rule = ConfidenceStop(warmup=3, percentile=50)
    assert rule.threshold_from([2.0, 4.0]) is None
    assert rule.threshold_from([2.0, 4.0, 3.0, 0.1]) == pytest.approx(3.0)  # first 3 only
    assert ConfidenceStop(threshold=1.5).threshold_from([]) == 1.5
    assert rule.fired(True, 2.9, 3.0)
    assert not rule.fired(True, 3.0, 3.0)  # below, not at
    assert not rule.fired(False, 0.0, 3.0)  # the window is not full yet
    assert not rule.fired(True, 0.0, None)  # no threshold yet
    with pytest.raises(ValueError, match="warmup"):
        ConfidenceStop(warmup=0)
    with pytest.raises(ValueError, match="percentile"):
        ConfidenceStop(percentile=101)
