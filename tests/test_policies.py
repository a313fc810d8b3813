import pytest

from aimo_infer.solve.policies import PRESETS, Agreement, AnyOf, Quorum, parse_policy


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
