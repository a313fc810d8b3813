"""Symbolic equivalence of two answer expressions with math-verify, plus the worker loop.

Run in a child process (``python -m aimo_infer.evaluate.symbolic``) by ``aimo_infer.evaluate.grade``, which kills
it when a check overruns: sympy can spend minutes inside one C call on ``10^{10^{9}}``, where
no signal-based timeout reaches it. Comma lists are split here, since math-verify reads
``98,118,122,142`` as one number and ``6,6,6,5`` as the set ``{5, 6}``.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass

from aimo_infer.solve.answer import normalize_expression, parse_integer

_OPENERS = {"(": ")", "[": "]", "{": "}"}
_ELLIPSES = ("\\ldots", "\\cdots", "\\dots", "...")
_PLAIN_INT_CHARS = frozenset("+-0123456789")


@dataclass(frozen=True)
class Judgement:
    """A verdict and how it was reached (method: "exact-int", "symbolic" or "string")."""

    correct: bool
    method: str
    detail: str


def judge(predicted: str, reference: str) -> Judgement:
    """Whether ``predicted`` denotes the same answer as ``reference`` (list-aware)."""
    pred, ref = normalize_expression(predicted), normalize_expression(reference)
    ref_items = split_top_level(ref)
    if len(ref_items) == 1:
        return _judge_element(pred, ref)
    pred_items = split_top_level(pred)
    if len(pred_items) == 1:
        pred_items = split_top_level(_unwrap_group(pred))
    ref_items, pred_items = expand_plus_minus(ref_items), expand_plus_minus(pred_items)
    if len(pred_items) != len(ref_items):
        return Judgement(False, "symbolic", f"{len(pred_items)} items, expected {len(ref_items)}")
    ordered = len(set(ref_items)) < len(ref_items) or any(e in ref for e in _ELLIPSES)
    equal = lists_equivalent(pred_items, ref_items, ordered, _element_equivalent)
    kind = "ordered list" if ordered else "unordered list"
    return Judgement(equal, "symbolic", f"{kind} of {len(ref_items)}")


def split_top_level(expression: str) -> list[str]:
    """Split on commas outside (), [], {} and ``\\{ \\}``; items stripped, empties kept out."""
    items, depth, start = [], 0, 0
    for i, char in enumerate(expression):
        if char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == "," and depth == 0:
            items.append(expression[start:i])
            start = i + 1
    items.append(expression[start:])
    return [item.strip() for item in items if item.strip()]


def expand_plus_minus(items: list[str]) -> list[str]:
    """``\\pm x`` stands for two values: ``+x`` and ``-x`` (``\\mp`` the other way round)."""
    expanded = []
    for item in items:
        if "\\pm" in item or "\\mp" in item:
            plus = item.replace("\\pm", "+").replace("\\mp", "-")
            minus = item.replace("\\pm", "-").replace("\\mp", "+")
            expanded.extend([plus, minus])
        else:
            expanded.append(item)
    return expanded


def lists_equivalent(
    predicted: list[str],
    reference: list[str],
    ordered: bool,
    equivalent: Callable[[str, str], bool],
) -> bool:
    """Item-wise equivalence, in order or as multisets (each item matched at most once)."""
    if len(predicted) != len(reference):
        return False
    if ordered:
        return all(equivalent(p, r) for p, r in zip(predicted, reference, strict=True))
    unmatched = list(predicted)
    for ref_item in reference:
        match = next((p for p in unmatched if equivalent(p, ref_item)), None)
        if match is None:
            return False
        unmatched.remove(match)
    return True


def _unwrap_group(expression: str) -> str:
    """``\\{a, b\\}``, ``(a, b)`` or ``[a, b]`` -> ``a, b``; anything else unchanged."""
    text = expression.replace("\\{", "{").replace("\\}", "}")
    if len(text) >= 2 and _OPENERS.get(text[0]) == text[-1]:
        return text[1:-1]
    return expression


def _judge_element(pred: str, ref: str) -> Judgement:
    exact = _exact_integers(pred, ref)
    if exact is not None:
        return Judgement(exact, "exact-int", "both integers")
    verdict = _math_verify(pred, ref)
    if verdict is None:
        return Judgement(pred == ref, "string", "not parsed as math; compared as text")
    return Judgement(verdict, "symbolic", "math-verify")


def _element_equivalent(pred: str, ref: str) -> bool:
    exact = _exact_integers(pred, ref)
    if exact is not None:
        return exact
    verdict = _math_verify(pred, ref)
    return pred == ref if verdict is None else verdict


def _exact_integers(pred: str, ref: str) -> bool | None:
    """Exact comparison when the reference is a plain integer and the prediction one too."""
    if not ref or not set(ref) <= _PLAIN_INT_CHARS:
        return None
    ref_value, pred_value = parse_integer(ref), parse_integer(pred)
    if ref_value is None or pred_value is None:
        return None
    return ref_value == pred_value


def _math_verify(pred: str, ref: str) -> bool | None:
    """math-verify's verdict, or None when either side does not parse to a sympy object."""
    from math_verify import parse, verify
    from sympy import Basic, MatrixBase

    def parsed(expression: str) -> list:
        values = parse(f"\\boxed{{{expression}}}", parsing_timeout=None)
        return [v for v in values if isinstance(v, (Basic, MatrixBase))]

    gold, target = parsed(ref), parsed(pred)
    if not gold or not target:
        return None
    return bool(verify(gold, target, timeout_seconds=None))


def serve() -> None:
    """Answer one JSON request per stdin line (``{"pred", "ref"}``) with a JSON Judgement line."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    logging.getLogger("math_verify").setLevel(logging.ERROR)  # timeouts are the parent's job
    out = sys.stdout
    sys.stdout = sys.stderr  # nothing a library prints may corrupt the protocol
    try:
        import math_verify  # noqa: F401

        out.write(json.dumps({"ready": True}) + "\n")
    except ImportError as exc:
        out.write(json.dumps({"ready": False, "error": str(exc)}) + "\n")
        out.flush()
        return
    out.flush()
    for line in sys.stdin:
        try:
            request = json.loads(line)
            reply = asdict(judge(request["pred"], request["ref"]))
        except Exception as exc:  # a bad request must not end the worker
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    serve()
