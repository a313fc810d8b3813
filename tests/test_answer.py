"""Answer extraction: boxes, fallbacks, literal forms, profiles and cut streams."""

from __future__ import annotations

import pytest

from aimo_infer.solve.answer import (
    PROFILES,
    extract_answer,
    extract_boxed,
    parse_integer,
    prose,
)

# (text, expected answer under the aimo3 profile)
AIMO3_CASES = [
    pytest.param(r"The answer is $\boxed{42}$.", 42, id="plain-box"),
    pytest.param(r"\fbox{17}", 17, id="fbox"),
    pytest.param(r"so we get \boxed 5 and stop", 5, id="space-form"),
    pytest.param(r"hence \boxed 5.", 5, id="space-form-sentence-end"),
    pytest.param(r"\boxed{12} no wait \boxed{34}", 34, id="repeated-boxes-last-wins"),
    pytest.param(r"\boxed{1}\boxed{2}", 2, id="adjacent-boxes-not-concatenated"),
    pytest.param(r"\boxed{\dfrac{84}{4}}", 21, id="dfrac-integer"),
    pytest.param(r"\boxed{\frac{84}{4}}", 21, id="frac-integer"),
    pytest.param(r"\boxed{\tfrac{100}{4}}", 25, id="tfrac-integer"),
    pytest.param(r"\boxed{\frac93}", 3, id="frac-short-form-one-digit-each"),
    pytest.param(r"\boxed{84/4}", 21, id="slash-integer"),
    pytest.param(r"\boxed{\frac{1}{2}}", None, id="frac-not-integer"),
    pytest.param(r"\boxed{1,234}", 1234, id="thousands-comma"),
    pytest.param(r"\boxed{1{,}234}", 1234, id="thousands-braced-comma"),
    pytest.param(r"\boxed{1\,234}", 1234, id="thousands-thin-space"),
    pytest.param(r"\boxed{12,34}", None, id="comma-not-thousands"),
    pytest.param(r"\boxed{\text{42}}", 42, id="text-wrapper"),
    pytest.param(r"\boxed{\textbf{42}}", 42, id="textbf-wrapper"),
    pytest.param(r"\boxed{42 \text{ cm}}", 42, id="trailing-unit"),
    pytest.param(r"\boxed{$42$}", 42, id="dollars-inside-box"),
    pytest.param(r"\boxed{90^\circ}", 90, id="degree-circ"),
    pytest.param(r"\boxed{90^{\circ}}", 90, id="degree-braced-circ"),
    pytest.param("\\boxed{90°}", 90, id="degree-sign"),
    pytest.param(r"\boxed{42.}", 42, id="trailing-period-in-box"),
    pytest.param(r"\boxed{x = 42}", 42, id="assignment-in-box"),
    pytest.param(r"\boxed{n = m = 42}", 42, id="chained-assignment"),
    pytest.param(r"\boxed{a = 1, b = 2}", None, id="two-assignments"),
    pytest.param(r"\boxed{42} Let me double-check: 6 * 7 = 42.", 42, id="text-after-box"),
    pytest.param(r"\boxed{016}", 16, id="leading-zeros"),
    pytest.param(r"\boxed{42.0}", 42, id="decimal-zero"),
    pytest.param(r"\boxed{42.5}", None, id="decimal-fraction"),
    pytest.param(r"\boxed{-5}", None, id="negative-out-of-range"),
    pytest.param(r"\boxed{0}", 0, id="zero"),
    pytest.param(r"\boxed{99999}", 99999, id="upper-bound"),
    pytest.param(r"\boxed{100000}", None, id="above-upper-bound-no-modulo"),
    pytest.param(r"\boxed{\boxed{7}}", 7, id="nested-box"),
    pytest.param(r"\boxed{{42}}", 42, id="double-braces"),
    pytest.param(r"\boxed{\left\{ 3 \right\}}", None, id="set-braces-not-integer"),
    pytest.param(r"\boxed{2^{10}}", 1024, id="small-power"),
    pytest.param(r"\boxed{10^{10^{9}}}", None, id="huge-exponent-no-hang"),
    pytest.param(r"\boxed{10^{1000000000}}", None, id="huge-flat-exponent-no-hang"),
    pytest.param("\\boxed{" + "9" * 5000 + "}", None, id="too-many-digits"),
    pytest.param(r"The answer is **73**.", 73, id="bold-fallback"),
    pytest.param(r"**Final Answer:** **73**", 73, id="bold-after-label"),
    pytest.param(r"**Answer: 73**", 73, id="bold-with-label"),
    pytest.param(r"**Step 1** compute. **Step 2** done.", None, id="bold-prose-ignored"),
    pytest.param(r"**12** then \boxed{34}", 34, id="box-beats-bold"),
    pytest.param(r"\boxed{}", None, id="empty-box"),
    pytest.param(r"no answer here, only 42 in prose", None, id="no-box-no-bold"),
    pytest.param("", None, id="empty-text"),
    pytest.param(r"\boxed{12} and finally \boxed{34", 12, id="cut-unclosed-last-box"),
    pytest.param(r"\boxed{\frac{3}{4} then cut", None, id="cut-only-unclosed-box"),
    pytest.param(r"so the answer is \boxed 12", None, id="cut-space-form-at-end"),
    pytest.param(r"\boxed{\{1,2\}} then \boxed{5}", 5, id="escaped-braces-in-earlier-box"),
    pytest.param(r"\boxed{\text{The answer is } 42}", 42, id="label-inside-text"),
    pytest.param("\\boxed{\u221242}", None, id="unicode-minus-negative"),
    pytest.param("2+3 = 5\n\nThe answer is: 5\n", 5, id="stated-answer-no-box"),
    pytest.param("So the final answer is $1{,}024$.", 1024, id="stated-final-answer-latex"),
    pytest.param("The answer is 7. Hmm, recheck: the answer is 9.", 9, id="stated-last-wins"),
    pytest.param("The answer is 12", None, id="stated-number-at-end-may-be-cut"),
    pytest.param("The answer is 3. Thus \\boxed{4}", 4, id="box-beats-stated"),
    pytest.param("The answer is 3. So **8**", 8, id="bold-beats-stated"),
    pytest.param("The answer is x+1, where x = 4.", None, id="stated-non-integer-ignored"),
    pytest.param(r"\boxed{\$450}", 450, id="escaped-dollar-sign"),
    pytest.param(r"\boxed{450\text{ dollars}}", 450, id="unit-in-text-wrapper"),
    pytest.param(r"\boxed{\sqrt{16}}", 4, id="exact-square-root"),
    pytest.param(r"\boxed{\sqrt{15}}", None, id="inexact-root-not-an-integer"),
    pytest.param(r"\boxed{2\sqrt{9} + \frac{10}{5}}", 8, id="exact-expression"),
    pytest.param(r"\boxed{\sqrt[3]{27}}", 3, id="cube-root"),
    pytest.param(r"\boxed{\binom{10}{3}}", 120, id="binomial"),
    pytest.param(r"\boxed{5!}", 120, id="factorial"),
    pytest.param(r"\boxed{2^{-1} \cdot 4}", 2, id="negative-power-exact"),
    pytest.param(r"\boxed{1000!}", None, id="huge-factorial-out-of-range"),
    pytest.param(r"\boxed{\text{(C) } 14}", 14, id="choice-label"),
    pytest.param(r"\boxed{(C)}", None, id="choice-letter-alone"),
    pytest.param(r"\boxed{7} so for general n it is \boxed{n+1}", None,
                 id="invalid-last-box-decides"),
    pytest.param("\\boxed{5} " + "\\boxed{" * 30_000, 5, id="30k-unclosed-boxes"),
    pytest.param("\\boxed{" + "{" * 2000 + "9" + "}" * 2000 + "}", None, id="deep-braces-too-long"),
]


@pytest.mark.parametrize(("text", "expected"), AIMO3_CASES)
def test_extract_aimo3(text: str, expected: int | None) -> None:
    assert extract_answer(text) == expected
    assert extract_answer(text, "aimo3") == expected


AIMO2_CASES = [
    pytest.param(r"\boxed{1234}", 234, id="reduced-mod-1000"),
    pytest.param(r"\boxed{999}", 999, id="below-1000-unchanged"),
    pytest.param(r"\boxed{-1}", 999, id="negative-python-modulo"),
    pytest.param(r"\boxed{2^{10}}", 24, id="power-then-modulo"),
    pytest.param(r"\boxed{\frac{1}{2}}", None, id="fraction-invalid"),
    pytest.param(r"\boxed{1{,}000{,}007}", 7, id="thousands-then-modulo"),
]


@pytest.mark.parametrize(("text", "expected"), AIMO2_CASES)
def test_extract_aimo2(text: str, expected: int | None) -> None:
    assert extract_answer(text, "aimo2") == expected


FREE_CASES = [
    pytest.param(r"\boxed{\frac{1}{2}}", r"\frac{1}{2}", id="fraction-kept"),
    pytest.param(r"\boxed{\dfrac{84}{4}}", 21, id="integer-fraction-as-int"),
    pytest.param(r"\boxed{-5}", -5, id="negative-int"),
    pytest.param(r"\boxed{123456}", 123456, id="large-int-no-modulo"),
    pytest.param(r"\boxed{ 3 \sqrt{6} }.", r"3 \sqrt{6}", id="surd-stripped"),
    pytest.param(r"\boxed{\text{(1, 2)}}", "(1, 2)", id="text-unwrapped-tuple"),
    pytest.param(r"\boxed{$\pi$}", r"\pi", id="dollars-stripped"),
    pytest.param(r"\boxed{10^{10^{9}}}", "10^{10^{9}}", id="huge-exponent-as-string"),
    pytest.param(r"**$\frac{3}{4}$**", r"\frac{3}{4}", id="bold-math-fallback"),
    pytest.param(r"**Step 2** is done", None, id="bold-prose-ignored"),
    pytest.param(r"\boxed{}", None, id="empty-box"),
]


@pytest.mark.parametrize(("text", "expected"), FREE_CASES)
def test_extract_free(text: str, expected: int | str | None) -> None:
    assert extract_answer(text, "free") == expected


def test_prose_hides_code_and_output_spans() -> None:
    text = 'So \\boxed{3}.\n```python\nprint("\\\\boxed{5}")\n```\n```output\n\\boxed{5}\n```\nDone.'
    code = text.index("```python")
    end = text.index("Done.")
    assert extract_answer(text) == 5  # the raw text would take the sandbox's box
    assert extract_answer(prose(text, [(code, end)])) == 3
    assert prose("abcdef", [(1, 3), (2, 4)]) == "a\nef"


def test_free_integers_are_int_type() -> None:
    assert type(extract_answer(r"\boxed{016}", "free")) is int


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match="aimo2, aimo3, free"):
        extract_answer(r"\boxed{1}", "aimo4")


def test_profiles_constant_lists_every_profile() -> None:
    for profile in PROFILES:
        extract_answer(r"\boxed{1}", profile)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(r"\boxed{a{b}c}", "a{b}c", id="nested-braces-kept"),
        pytest.param(r"\boxed{1} \fbox{2}", "2", id="last-of-mixed"),
        pytest.param(r"\boxed{1} \boxed{2", "1", id="unclosed-skipped"),
        pytest.param(r"\boxedx{1}", None, id="other-command-not-a-box"),
        pytest.param("nothing", None, id="none"),
    ],
)
def test_extract_boxed_raw_content(text: str, expected: str | None) -> None:
    assert extract_boxed(text) == expected


def test_answer_grows_only_when_the_box_closes() -> None:
    """Feeding a stream prefix by prefix: no answer until the box is closed, then the answer."""
    text = r"We compute $6 \cdot 7$, so the answer is $\boxed{42}$."
    close = text.index("}") + 1
    for cut in range(len(text) + 1):
        expected = 42 if cut >= close else None
        assert extract_answer(text[:cut]) == expected, text[:cut]


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        pytest.param("-17", -17, id="negative"),
        pytest.param(r"-\frac{84}{4}", -21, id="negative-frac"),
        pytest.param(r"\frac{-84}{4}", -21, id="frac-negative-numerator"),
        pytest.param(r"\frac{84}{0}", None, id="division-by-zero"),
        pytest.param("1 234", 1234, id="space-grouped"),
        pytest.param("3^{0}", 1, id="zeroth-power"),
    ],
)
def test_parse_integer(expression: str, expected: int | None) -> None:
    assert parse_integer(expression) == expected
