"""List handling of the symbolic judge: splitting, plus-minus, ordered and unordered matching."""

from __future__ import annotations

import pytest

from aimo_infer.evaluate.symbolic import expand_plus_minus, judge, lists_equivalent, split_top_level


@pytest.mark.parametrize(
    ("expression", "items"),
    [
        pytest.param("98,118,122,142", ["98", "118", "122", "142"], id="bare-list"),
        pytest.param(
            r"\frac{1}{2}, \frac{\sqrt{7}}{7}",
            [r"\frac{1}{2}", r"\frac{\sqrt{7}}{7}"],
            id="latex-items",
        ),
        pytest.param("(1, 2)", ["(1, 2)"], id="tuple-is-one-item"),
        pytest.param(r"\{1, 2\}", [r"\{1, 2\}"], id="set-is-one-item"),
        pytest.param("f(1,2), 3", ["f(1,2)", "3"], id="comma-inside-call"),
        pytest.param("1,, 2", ["1", "2"], id="empty-items-dropped"),
    ],
)
def test_split_top_level(expression: str, items: list[str]) -> None:
    assert split_top_level(expression) == items


def test_expand_plus_minus() -> None:
    assert expand_plus_minus(["0", r"\pm i"]) == ["0", "+ i", "- i"]
    assert expand_plus_minus([r"1 \mp x"]) == ["1 - x", "1 + x"]


def _same(a: str, b: str) -> bool:
    return a == b


@pytest.mark.parametrize(
    ("predicted", "reference", "ordered", "expected"),
    [
        pytest.param(["2", "1"], ["1", "2"], False, True, id="unordered-permutation"),
        pytest.param(["2", "1"], ["1", "2"], True, False, id="ordered-permutation"),
        pytest.param(["1", "1"], ["1", "2"], False, False, id="each-item-used-once"),
        pytest.param(["1"], ["1", "2"], False, False, id="length-mismatch"),
    ],
)
def test_lists_equivalent(
    predicted: list[str], reference: list[str], ordered: bool, expected: bool
) -> None:
    assert lists_equivalent(predicted, reference, ordered, _same) is expected


def test_judge_in_process_reports_list_kind() -> None:
    verdict = judge("142, 122, 118, 98", "$98,118,122,142$")
    assert verdict.correct and verdict.detail == "unordered list of 4"
    assert not judge("98118122142", "$98,118,122,142$").correct


def test_judge_unparseable_falls_back_to_text() -> None:
    same, other = judge("???", "???"), judge("?!", "???")
    assert (same.correct, same.method) == (True, "string")
    assert (other.correct, other.method) == (False, "string")
