"""Notebook semantics for python tool cells: the last expression's value is shown."""

from __future__ import annotations

import contextlib
import io

import pytest

from aimo_infer.solve.notebook import notebook_cell


def run(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(notebook_cell(code), "<cell>", "exec"), {})
    return out.getvalue()


@pytest.mark.parametrize(
    ("code", "shown"),
    [
        ("x = 6 * 7\nx", "42\n"),
        ("x = 6 * 7\nx  # the answer", "42\n"),
        ("a = 1; a + 1", "2\n"),
        ("'é' * 2", "'éé'\n"),  # offsets are UTF-8 bytes in ast
        ("s = 'ü'; len(s) + (\n    40 +\n    1)", "42\n"),
        ("print(41)\n41 + 1", "41\n42\n"),
        ("print(42)", "42\n"),  # a print is not wrapped: its value is None
        ("x = 42", ""),
        ("None", ""),
        ("42;", ""),  # a trailing semicolon hides the value
        ("def f():\n    return 1\nf()", "1\n"),
        ("for i in range(2):\n    i", ""),  # only a top-level last expression
        ("", ""),
    ],
)
def test_the_last_expression_is_shown(code: str, shown: str) -> None:
    assert run(code) == shown


def test_code_that_does_not_parse_is_sent_unchanged() -> None:
    assert notebook_cell("x = (1,\n") == "x = (1,\n"
    assert notebook_cell("a\x00b") == "a\x00b"
