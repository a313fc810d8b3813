"""Notebook semantics for a python tool cell: show the value of its last expression, as Jupyter does.

gpt-oss was trained against a stateful Jupyter tool, so it often ends a cell with a bare
expression (``x**2 % 7``) and expects to see its value. The sandbox runs plain scripts, so the
harness rewrites the cell before sending it: a final expression statement becomes
``_ = (EXPR)`` followed by printing ``repr(_)`` when it is not None. A trailing ``;`` hides the
value (Jupyter's rule); code that does not parse is sent unchanged so the sandbox reports the
syntax error itself.
"""

from __future__ import annotations

import ast

_SHOW = "\nif _ is not None:\n    print(repr(_))\n"


def notebook_cell(code: str) -> str:
    """``code`` rewritten to print the value of its last top-level expression (if any)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: a NUL byte in the source
        return code
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    if last.end_lineno is None or last.end_col_offset is None:
        return code
    if _is_print_call(last.value):
        return code  # prints already, and its value is None
    lines = code.encode("utf-8").splitlines(keepends=True)  # ast offsets count UTF-8 bytes
    before = b"".join(lines[: last.lineno - 1]) + lines[last.lineno - 1][: last.col_offset]
    end_line = lines[last.end_lineno - 1]
    expression = b"".join(lines[last.lineno - 1 : last.end_lineno - 1]) + end_line[
        : last.end_col_offset
    ]
    expression = expression[len(before) - len(b"".join(lines[: last.lineno - 1])) :]
    after = end_line[last.end_col_offset :] + b"".join(lines[last.end_lineno :])
    if after.lstrip(b" \t").startswith(b";"):
        return code  # "x;" hides the value in a notebook
    head = before.decode("utf-8")
    body = expression.decode("utf-8")
    tail = after.decode("utf-8").strip()
    comment = f"  {tail}" if tail.startswith("#") else ""
    return f"{head}_ = ({body}){comment}{_SHOW}"


def _is_print_call(node: ast.expr) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
