"""The engine-independent rules shared by the vLLM and TensorRT-LLM adapters."""

from __future__ import annotations

import itertools
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from aimo_infer.backends.base import FINISH_REASONS, EngineUnavailable, find_stop
from aimo_infer.backends.streaming import (
    StopMatcher,
    clamp_max_tokens,
    identical_seeds_reason,
    import_engine_package,
    map_finish_reason,
)
from aimo_infer.manifest import EngineManifest


def feed_all(stops: tuple[str, ...], deltas: list[str]) -> tuple[str, str | None]:
    """Emitted text and matched stop after feeding deltas until the first stop."""
    matcher = StopMatcher(stops)
    emitted = ""
    for delta in deltas:
        text, matched = matcher.feed(delta)
        emitted += text
        if matched is not None:
            return emitted, matched
    return emitted, None


def test_stop_split_across_three_deltas_is_found_and_text_ends_with_it() -> None:
    assert feed_all(("```output",), ["x = 2\n``", "`out", "put\n4", "```"]) == (
        "x = 2\n```output",
        "```output",
    )


def test_earliest_ending_stop_wins_and_empty_stops_are_ignored() -> None:
    assert feed_all(("", "bcd", "c"), ["ab", "cde"]) == ("abc", "c")


def test_no_stops_passes_text_through() -> None:
    assert feed_all((), ["a", "b"]) == ("ab", None)


@example(text="abcd", cuts=[2], stops=["abcd"])  # a stop starting in a short first delta
@given(
    text=st.text(alphabet="ab\n`", max_size=40),
    cuts=st.lists(st.integers(min_value=0, max_value=40), max_size=6),
    stops=st.lists(st.text(alphabet="ab\n`", min_size=1, max_size=4), min_size=1, max_size=3),
)
def test_streamed_matching_equals_matching_the_whole_text(
    text: str, cuts: list[int], stops: list[str]
) -> None:
    bounds = sorted({0, len(text), *(min(c, len(text)) for c in cuts)})
    deltas = [text[a:b] for a, b in itertools.pairwise(bounds)]
    end = find_stop(text, tuple(stops))
    emitted, matched = feed_all(tuple(stops), deltas)
    if end < 0:
        assert (emitted, matched) == (text, None)
    else:
        assert emitted == text[:end]
        assert matched is not None and emitted.endswith(matched)


@pytest.mark.parametrize(
    ("requested", "prompt_len", "context", "expected"),
    [(4096, 100, 1024, 924), (10, 100, 1024, 10), (50, 1024, 1024, 0), (50, 2000, 1024, 0),
     (7, 5, None, 7)],
)
def test_clamp_max_tokens(requested: int, prompt_len: int, context: int | None, expected: int) -> None:
    assert clamp_max_tokens(requested, prompt_len, context) == expected


@pytest.mark.parametrize(
    ("engine", "ours"),
    [("stop", "stop"), ("length", "length"), ("abort", "cancelled"), ("cancelled", "cancelled"),
     ("timeout", "error"), ("error", "error"), ("repetition", "length"), ("STOP", "stop"),
     ("something-new", "error")],
)
def test_map_finish_reason(engine: str, ours: str) -> None:
    assert map_finish_reason(engine) == ours
    assert ours in FINISH_REASONS


def test_identical_seeds_only_for_greedy_redrafter() -> None:
    def manifest(drafter: dict[str, object]) -> EngineManifest:
        return EngineManifest(model="m", backend="trt-engine", drafter=drafter)

    assert identical_seeds_reason(None) is None
    assert identical_seeds_reason(manifest({})) is None
    assert identical_seeds_reason(manifest({"kind": "redrafter", "greedy": False})) is None
    reason = identical_seeds_reason(manifest({"kind": "redrafter", "greedy": True}))
    assert reason is not None and "--redrafter_no_greedy_search" in reason


def test_missing_engine_package_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorrt_llm", None)  # None makes the import fail
    with pytest.raises(EngineUnavailable) as err:
        import_engine_package("tensorrt_llm", "trtllm", "on a GPU machine")
    assert str(err.value).startswith(
        "engine 'trtllm' needs tensorrt_llm: pip install 'aimo-infer[trtllm]' on a GPU machine ("
    )
