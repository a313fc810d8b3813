"""Answer extraction: the final answer of a (possibly cut) model stream, valid for a profile.

Runs on every finished stream, so it is plain string scanning with regexes compiled once, in
time linear in the text (30,000 tokens of unclosed boxes included); no sympy. The last closed
``\\boxed{}``/``\\fbox{}`` decides, even when its content is not a valid answer (the model's
last word replaces its earlier boxes: ``\\boxed{7} ... \\boxed{n+1}`` states no answer);
``**bold**`` is the fallback when the text holds no box at all, and a stated "the answer is N"
(an integer) the last resort: small models often say their answer without boxing it. The
solve loop passes only the model's prose (``prose``): code cells and the sandbox's output are
not searched, so ``print("\\boxed{5}")`` states no answer.

Profiles:
- ``aimo2``: an integer, reduced mod 1000 with Python's ``%`` (so ``-1`` becomes ``999``).
- ``aimo3``: an integer in 0..99999, no implicit modulo (out of range gives None).
- ``free``: any expression, lightly normalised; integers come back as ``int``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence

from aimo_infer.config import ConfigError
from aimo_infer.solve.exact import exact_integer
from aimo_infer.solve.ranges import to_profile

PROFILES: tuple[str, ...] = ("aimo2", "aimo3", "free")

# Integer powers are evaluated only below this many decimal digits (guards 10^{10^9}).
MAX_POWER_DIGITS = 4_000
# Only the last few bold spans are tried: the answer sits near the end, prose bold is common.
MAX_BOLD_CANDIDATES = 8
# A box content longer than this is not an answer (and is not parsed).
MAX_ANSWER_CHARS = 1_000

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_BRACE_RE = re.compile(r"\\[{}]|[{}]")
_BOLD_RE = re.compile(r"\*\*([^*\n]{1,200}?)\*\*")
_SPACE_TOKEN_RE = re.compile(r"[ \t]+([^\s$]+)")

_DELIMITERS_RE = re.compile(r"\$|\\\(|\\\)|\\\[|\\\]")
_TEXT_WRAPPER_RE = re.compile(
    r"\\(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname|boxed|fbox)\s*\{([^{}]*)\}"
)
_TRAILING_UNIT_RE = re.compile(r"\\(?:text|mathrm|mbox)\s*\{[^{}\d]*\}\s*$")
_SPACING_RE = re.compile(r"\\[,!;:> ]|\\(?:quad|qquad|displaystyle|left|right)(?![A-Za-z])|~")
_DEGREE_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\degree(?![A-Za-z])|\\circ(?![A-Za-z])")
_LABEL_RE = re.compile(r"^(?:the\s+)?(?:final\s+)?answer\b\s*(?:is\b|:)?\s*", re.IGNORECASE)
_SPACES_RE = re.compile(r"\s+")
_CHOICE_RE = re.compile(r"^\(?[A-E]\)\s*(?=\S)")  # "(C) 14": a multiple-choice label
# "The answer is: 5", "Final answer: -12", "the final answer is $1{,}024$."
_STATED_RE = re.compile(
    r"(?:final\s+answer|the\s+answer)\s*(?:is\b|:|=)\s*:?\s*\$?\s*([+-]?\d[\d,{}]*)(?=([\s\S]?))",
    re.IGNORECASE,
)

_INT_RE = re.compile(r"[+-]?\d+")
_DECIMAL_INT_RE = re.compile(r"([+-]?\d+)\.0*")
_COMMA_GROUPS_RE = re.compile(r"[+-]?\d{1,3}(?:,\d{3})+(?:\.0*)?")
_SPACE_GROUPS_RE = re.compile(r"[+-]?\d{1,3}(?: \d{3})+")
_FRAC_RE = re.compile(
    r"([+-]?)\\[dt]?frac\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))\s*(?:\{\s*([+-]?\d+)\s*\}|(\d))"
)
_SLASH_RE = re.compile(r"([+-]?\d+)\s*/\s*([+-]?\d+)")
_POWER_RE = re.compile(r"([+-]?)(\d+)\s*\^\s*(?:\{\s*(\d+)\s*\}|(\d))")


def extract_answer(text: str, profile: str = "aimo3") -> int | str | None:
    """The answer ``text`` states, valid for ``profile``; None when it states none."""
    validate = _validator(profile)
    content = extract_boxed(text)
    if content is not None:
        return validate(content) if len(content) <= MAX_ANSWER_CHARS else None
    for bold in reversed(_BOLD_RE.findall(text)[-MAX_BOLD_CANDIDATES:]):
        if profile == "free" and parse_integer(bold) is None and "$" not in bold:
            continue  # in free text, bold prose ("**Step 2**") is not an answer
        answer = validate(bold)
        if answer is not None:
            return answer
    return _stated_answer(text, validate)


def _stated_answer(text: str, validate: Callable[[str], int | str | None]) -> int | str | None:
    """The integer of the last "the answer is N"; one touching the end of the text may be cut."""
    for match in reversed(list(_STATED_RE.finditer(text))):
        if not match.group(2):  # the number ends the text: a stream cut mid-number
            continue
        answer = validate(match.group(1).rstrip(",").replace("{,}", ","))
        if isinstance(answer, int):
            return answer
    return None


def prose(text: str, hidden: Sequence[tuple[int, int]] = ()) -> str:
    """``text`` without the ``hidden`` spans (code cells, sandbox output), each replaced by a
    line break so that words on either side do not join."""
    if not hidden:
        return text
    parts, at = [], 0
    for start, end in sorted(hidden):
        if start > at:
            parts.append(text[at:start])
        at = max(at, end)
    parts.append(text[at:])
    return "\n".join(parts)


def extract_boxed(text: str) -> str | None:
    """Raw content of the last closed ``\\boxed``/``\\fbox`` in ``text`` (None when none).

    A box still open at the end of the text (a stream cut mid-answer) is skipped; so is the
    space form (``\\boxed 5``) when its token touches the end of the text. One pass over the
    braces matches them all, so many unclosed boxes cost linear time, not quadratic.
    """
    starts = [m.end() for m in _BOX_RE.finditer(text)]
    if not starts:
        return None
    closing = _brace_matches(text, starts[-1])  # the usual case: the last box is closed
    content = _box_content(text, starts[-1], closing)
    if content is not None or len(starts) == 1:
        return content
    closing = _brace_matches(text, starts[0])
    for start in reversed(starts):
        content = _box_content(text, start, closing)
        if content is not None:
            return content
    return None


def parse_integer(expression: str) -> int | None:
    """The integer an answer expression denotes, or None (no sympy: literal forms only).

    Accepts ``016``, ``42.0``, ``1,234``/``1{,}234``/``1\\,234``, ``-7``, ``x = 42``,
    ``\\frac{84}{4}``, ``2^{10}``, ``\\text{}`` wrappers, ``$``, degrees and a trailing period.
    """
    cleaned = _TRAILING_UNIT_RE.sub("", _clean(expression))
    cleaned = _LABEL_RE.sub("", _unwrap_text(cleaned).strip())
    cleaned = _CHOICE_RE.sub("", cleaned)
    cleaned = cleaned.replace("\\%", "").strip().rstrip(".").strip()
    cleaned = _strip_outer_braces(_assignment_value(cleaned))
    value = _literal_integer(cleaned)
    return exact_integer(cleaned) if value is None else value


def normalize_expression(expression: str) -> str:
    """Light normalisation for free-form answers: no ``$``, ``\\text{}`` or stray spaces."""
    cleaned = _LABEL_RE.sub("", _unwrap_text(_clean(expression)).strip())
    cleaned = _SPACES_RE.sub(" ", cleaned).strip().rstrip(".").strip()
    return _strip_outer_braces(cleaned)


def _validator(profile: str) -> Callable[[str], int | str | None]:
    """The content-to-answer function of ``profile``; ValueError for an unknown one."""
    if profile == "aimo2":
        return _aimo2_answer
    if profile == "aimo3":
        return _aimo3_answer
    if profile == "free":
        return _free_answer
    raise ConfigError(f"unknown answer profile {profile!r}; known profiles: {', '.join(PROFILES)}")


def _aimo2_answer(content: str) -> int | None:
    value = parse_integer(content)
    return None if value is None else to_profile(value, "aimo2")


def _aimo3_answer(content: str) -> int | None:
    value = parse_integer(content)
    return None if value is None else to_profile(value, "aimo3")


def _free_answer(content: str) -> int | str | None:
    value = parse_integer(content)
    if value is not None:
        return value
    return normalize_expression(content) or None


def _box_content(text: str, start: int, closing: dict[int, int]) -> str | None:
    """Content of the box whose command ends at ``start``, or None when it is not closed."""
    pos = start
    while pos < len(text) and text[pos] in " \t\n":
        pos += 1
    if pos < len(text) and text[pos] == "{":
        end = closing.get(pos)
        return None if end is None else text[pos + 1 : end]
    token = _SPACE_TOKEN_RE.match(text, start)
    if token is None:
        return None
    value = token.group(1)
    if token.end() == len(text) and not value.endswith((".", ",", ";")):
        return None  # may be cut mid-number
    return value


def _brace_matches(text: str, start: int = 0) -> dict[int, int]:
    """``{open index: close index}`` of every matched brace from ``start`` (escaped ignored)."""
    opened: list[int] = []
    closing: dict[int, int] = {}
    for match in _BRACE_RE.finditer(text, start):
        brace = match.group()
        if brace == "{":
            opened.append(match.start())
        elif brace == "}" and opened:
            closing[opened.pop()] = match.start()
    return closing


def _matching_brace(text: str, open_pos: int) -> int | None:
    """Index of the ``}`` closing the ``{`` at ``open_pos`` (escaped braces ignored)."""
    depth = 0
    for match in _BRACE_RE.finditer(text, open_pos):
        brace = match.group()
        if len(brace) == 2:
            continue
        depth += 1 if brace == "{" else -1
        if depth == 0:
            return match.start()
    return None


def _clean(expression: str) -> str:
    """Drop math delimiters, spacing commands, degree signs; ``{,}`` becomes ``,``."""
    cleaned = _DELIMITERS_RE.sub("", expression.replace("\\$", ""))
    cleaned = cleaned.replace("{,}", ",").replace("\u2212", "-")
    cleaned = _DEGREE_RE.sub("", cleaned)
    cleaned = _SPACING_RE.sub(lambda m: "" if m.group() in ("\\,", "\\!") else " ", cleaned)
    return cleaned.strip()


def _unwrap_text(expression: str) -> str:
    """Replace ``\\text{X}`` (and similar wrappers, innermost first) by ``X``."""
    previous = None
    while previous != expression:
        previous = expression
        expression = _TEXT_WRAPPER_RE.sub(r"\1", expression)
    return expression


def _strip_outer_braces(expression: str) -> str:
    """``{{42}}`` -> ``42``, only when the outer braces enclose everything."""
    while expression.startswith("{") and _matching_brace(expression, 0) == len(expression) - 1:
        expression = expression[1:-1].strip()
    return expression


def _assignment_value(expression: str) -> str:
    """Right-hand side of ``x = 42`` or ``a = b = 42``; unchanged for ``a = 1, b = 2``."""
    parts = expression.split("=")
    if len(parts) == 1 or any("," in part for part in parts[:-1]):
        return expression
    return parts[-1].strip()


def _literal_integer(text: str) -> int | None:
    """Integer value of one literal form (plain, decimal .0, grouped, fraction, power)."""
    if _INT_RE.fullmatch(text):
        return _safe_int(text)
    if match := _DECIMAL_INT_RE.fullmatch(text):
        return _safe_int(match.group(1))
    if _COMMA_GROUPS_RE.fullmatch(text):
        return _safe_int(text.replace(",", "").split(".")[0])
    if _SPACE_GROUPS_RE.fullmatch(text):
        return _safe_int(text.replace(" ", ""))
    if match := _FRAC_RE.fullmatch(text):
        sign, num_braced, num_digit, den_braced, den_digit = match.groups()
        value = _exact_quotient(num_braced or num_digit, den_braced or den_digit)
        return None if value is None else (-value if sign == "-" else value)
    if match := _SLASH_RE.fullmatch(text):
        return _exact_quotient(match.group(1), match.group(2))
    if match := _POWER_RE.fullmatch(text):
        sign, base, exp_braced, exp_digit = match.groups()
        value = _bounded_power(int(base), int(exp_braced or exp_digit))
        return None if value is None else (-value if sign == "-" else value)
    return None


def _safe_int(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:  # more digits than int() converts
        return None


def _exact_quotient(numerator: str, denominator: str) -> int | None:
    num, den = _safe_int(numerator), _safe_int(denominator)
    if num is None or not den or num % den:
        return None
    return num // den


def _bounded_power(base: int, exponent: int) -> int | None:
    """``base ** exponent`` when the result stays below MAX_POWER_DIGITS digits."""
    if base in (0, 1) or exponent == 0:
        return base**exponent
    if exponent * math.log10(base) > MAX_POWER_DIGITS:
        return None
    return base**exponent
