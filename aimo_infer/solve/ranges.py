"""The answers each competition accepts, in one place.

AIMO-2 takes an integer and scores it mod 1000 (its answer extraction reduces with Python's
``%``, so -1 is 999); AIMO-3 takes 0-99999 and nothing else, since a modulo there is only
right when the problem states one. Used by answer extraction, the problem-set readers, the
gateway's row check and the submission's ``predict``.
"""

from __future__ import annotations

ANSWER_LIMITS: dict[str, int] = {"aimo2": 1000, "aimo3": 100_000}  # valid: 0 .. limit - 1
AIMO3_MAX = ANSWER_LIMITS["aimo3"] - 1


def in_range(value: int, profile: str) -> bool:
    """Whether ``value`` is an answer ``profile`` accepts as it stands."""
    return 0 <= value < ANSWER_LIMITS[profile]


def to_profile(value: int, profile: str) -> int | None:
    """``value`` as ``profile`` scores it: aimo2 reduces mod 1000, aimo3 keeps 0-99999 and
    rejects the rest (None)."""
    if profile == "aimo2":
        return value % ANSWER_LIMITS["aimo2"]
    return value if in_range(value, profile) else None
