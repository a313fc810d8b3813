"""The exact value of a small LaTeX arithmetic expression, for answers such as ``\\sqrt{16}``.

A bounded recursive-descent evaluator over ``Fraction`` (no sympy, no ``eval``): integers,
``+ - * / \\times \\cdot \\div``, ``^``, ``\\frac``, ``\\sqrt`` (exact roots only), ``\\binom``,
``!`` and brackets. Anything else, an inexact root or a value past the size limits gives None:
an answer is taken only when the expression is exactly one integer.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

MAX_EXPRESSION_CHARS = 200  # an answer expression longer than this is not evaluated
MAX_DIGITS = 4_000  # no intermediate value may pass this many decimal digits
MAX_FACTORIAL = 1_000
MAX_DEPTH = 50  # nested brackets

_TOKEN_RE = re.compile(r"\s*(\d+|\\[A-Za-z]+|[-+*/^(){}\[\]!])")
_MULTIPLY = frozenset({"*", "\\times", "\\cdot"})
_DIVIDE = frozenset({"/", "\\div"})
_ATOM_START = frozenset({"(", "{", "\\frac", "\\dfrac", "\\tfrac", "\\sqrt", "\\binom"})


class _Invalid(ValueError):
    """The expression is not one this evaluator takes."""


def exact_integer(expression: str) -> int | None:
    """The integer ``expression`` denotes exactly, or None (not arithmetic, inexact, too big)."""
    if len(expression) > MAX_EXPRESSION_CHARS:
        return None
    tokens = _tokenize(expression)
    if not tokens:
        return None
    try:
        parser = _Parser(tokens)
        value = parser.expression()
        if parser.pos != len(tokens):
            return None
    except (_Invalid, ZeroDivisionError, OverflowError, ValueError):
        return None
    return value.numerator if value.denominator == 1 else None


def _tokenize(expression: str) -> list[str]:
    tokens, pos = [], 0
    text = expression.strip()
    while pos < len(text):
        match = _TOKEN_RE.match(text, pos)
        if match is None:
            return []
        tokens.append(match.group(1))
        pos = match.end()
    return tokens


def _checked(value: Fraction) -> Fraction:
    for part in (value.numerator, value.denominator):
        if abs(part).bit_length() > MAX_DIGITS * 3.33:
            raise _Invalid("too large")
    return value


def _exact_root(value: Fraction, degree: int) -> Fraction:
    if degree < 1 or degree > 64 or (value < 0 and degree % 2 == 0):
        raise _Invalid("no real root")
    sign = -1 if value < 0 else 1
    parts = []
    for part in (abs(value.numerator), value.denominator):
        root = _integer_root(part, degree)
        if root**degree != part:
            raise _Invalid("inexact root")
        parts.append(root)
    return Fraction(sign * parts[0], parts[1])


def _integer_root(n: int, degree: int) -> int:
    if degree == 2:
        return math.isqrt(n)
    root = round(n ** (1.0 / degree)) if n.bit_length() < 1000 else 0
    for guess in (root - 1, root, root + 1):
        if guess >= 0 and guess**degree == n:
            return guess
    return root


class _Parser:
    def __init__(self, tokens: list[str]) -> None:
        self.tokens = tokens
        self.pos = 0
        self.depth = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _Invalid(f"expected {expected!r}")
        self.pos += 1
        return token

    def expression(self) -> Fraction:
        value = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.term()
            value = _checked(value + right if op == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while True:
            token = self.peek()
            if token in _MULTIPLY:
                self.take()
                value = _checked(value * self.unary())
            elif token in _DIVIDE:
                self.take()
                value = _checked(value / self.unary())
            elif token in _ATOM_START:  # implicit product: 2\sqrt{2}, 3(4)
                value = _checked(value * self.power())
            else:
                return value

    def unary(self) -> Fraction:
        if self.peek() in ("+", "-"):
            sign = self.take()
            value = self.unary()
            return -value if sign == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.postfix()
        if self.peek() != "^":
            return base
        self.take()
        exponent = self.unary() if self.peek() in ("+", "-") else self.power()
        if exponent.denominator != 1:
            raise _Invalid("fractional exponent")
        e = exponent.numerator
        if base not in (0, 1, -1) and abs(e) * math.log10(max(abs(base.numerator),
                                                               base.denominator)) > MAX_DIGITS:
            raise _Invalid("power too large")
        return _checked(base**e)

    def postfix(self) -> Fraction:
        value = self.atom()
        while self.peek() == "!":
            self.take()
            if value.denominator != 1 or not 0 <= value <= MAX_FACTORIAL:
                raise _Invalid("factorial")
            value = _checked(Fraction(math.factorial(value.numerator)))
        return value

    def group(self, open_: str, close: str) -> Fraction:
        self.take(open_)
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise _Invalid("too deep")
        value = self.expression()
        self.depth -= 1
        self.take(close)
        return value

    def argument(self) -> Fraction:
        """A command argument: ``{expr}``, or a single digit (``\\frac12``)."""
        token = self.peek()
        if token == "{":
            return self.group("{", "}")
        if token is not None and token.isdigit():
            if len(token) > 1:
                self.tokens[self.pos] = token[1:]
            else:
                self.pos += 1
            return Fraction(int(token[0]))
        raise _Invalid("argument")

    def atom(self) -> Fraction:
        token = self.peek()
        if token is None:
            raise _Invalid("end of expression")
        if token.isdigit():
            self.take()
            if len(token) > MAX_DIGITS:
                raise _Invalid("too many digits")
            return Fraction(int(token))
        if token == "(":
            return self.group("(", ")")
        if token == "{":
            return self.group("{", "}")
        if token in ("\\frac", "\\dfrac", "\\tfrac"):
            self.take()
            numerator = self.argument()
            return _checked(numerator / self.argument())
        if token == "\\binom":
            self.take()
            n, k = self.argument(), self.argument()
            if n.denominator != 1 or k.denominator != 1 or not 0 <= n <= MAX_FACTORIAL:
                raise _Invalid("binomial")
            return Fraction(math.comb(n.numerator, k.numerator) if k >= 0 else 0)
        if token == "\\sqrt":
            self.take()
            degree = Fraction(2)
            if self.peek() == "[":
                degree = self.group("[", "]")
                if degree.denominator != 1:
                    raise _Invalid("root degree")
            return _exact_root(self.argument(), degree.numerator)
        raise _Invalid(f"unexpected {token!r}")
