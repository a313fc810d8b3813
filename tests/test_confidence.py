"""Confidence measures on hand-computed sequences, and in the solve loop on the replay engine:
the online stop, the leader rule beside it, selection from the config, recorded logprobs."""

from __future__ import annotations

import asyncio
import math
from pathlib import Path

import pytest

from aimo_infer.backends.base import TokenLogprob
from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.config import Config, EngineConfig
from aimo_infer.solve.confidence import (
    ConfidenceSummary,
    StreamConfidence,
    entry_values,
    token_confidence,
    token_entropy,
)
from aimo_infer.solve.controller import Controller, ProblemResult, stream_seed
from aimo_infer.traces import TraceWriter, read_trace


def test_token_entropy_and_confidence_by_hand() -> None:
    half = math.log(0.5)
    # Two alternatives at 1/2 each: entropy ln 2, confidence -ln(1/2) = ln 2.
    assert token_entropy([half, half]) == pytest.approx(math.log(2))
    assert token_confidence([half, half]) == pytest.approx(math.log(2))
    # A sure token (p = 1) and an impossible one: entropy 0; confidence is the mean of -log p.
    assert token_entropy([0.0]) == 0.0
    assert token_confidence([0.0, -9.0]) == pytest.approx(4.5)
    # p = 0.7, 0.2, 0.1: -(0.7 ln .7 + .2 ln .2 + .1 ln .1) = 0.80182
    top = [math.log(0.7), math.log(0.2), math.log(0.1)]
    assert token_entropy(top) == pytest.approx(0.801819, abs=1e-6)
    assert token_confidence(top) == pytest.approx(-(math.log(0.014)) / 3)


def test_entry_values_use_the_alternatives_or_the_chosen_token() -> None:
    entry = TokenLogprob(3, math.log(0.5), ((3, math.log(0.5)), (9, math.log(0.25))))
    entropy, confidence = entry_values(entry)
    assert entropy == pytest.approx(0.5 * math.log(2) + 0.25 * math.log(4))
    assert confidence == pytest.approx((math.log(2) + math.log(4)) / 2)
    assert entry_values(TokenLogprob(1, -2.0)) == (pytest.approx(2 * math.exp(-2.0)), 2.0)


def feed(tracker: StreamConfidence, confidences: list[float], entropies: list[float]) -> None:
    for c, h in zip(confidences, entropies, strict=True):
        tracker.add_values(h, c)


def test_sliding_window_lowest_and_bottom_groups_by_hand() -> None:
    tracker = StreamConfidence(window=3, tail=2)
    confidences = [3.0, 3.0, 3.0, 0.0, 3.0, 3.0, 6.0, 6.0]
    entropies = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    feed(tracker, confidences[:2], entropies[:2])
    assert not tracker.window_full
    assert tracker.window_confidence == 3.0
    feed(tracker, confidences[2:], entropies[2:])
    # Windows of 3 end at tokens 3..8: means 3, 2, 2, 2, 4, 5.
    s = tracker.summary()
    assert s.tokens == 8
    assert s.lowest_group == pytest.approx(2.0)
    assert s.lows == ((3, 3.0), (4, 2.0))  # a new low only when strictly lower
    assert s.bottom_group == pytest.approx(2.0)  # ceil(10% of 6) = 1 group: the lowest
    assert s.mean_confidence == pytest.approx(sum(confidences) / 8)
    assert s.mean_entropy == pytest.approx(sum(entropies) / 8)
    assert s.tail_entropy == pytest.approx((0.7 + 0.8) / 2)
    assert tracker.window_confidence == pytest.approx(5.0)
    assert s.first_below(2.5) == 4
    assert s.first_below(3.5) == 3
    assert s.first_below(2.0) is None


def test_bottom_ten_percent_is_the_mean_of_the_lowest_groups() -> None:
    tracker = StreamConfidence(window=1, tail=5)
    values = [float(v) for v in range(1, 21)]  # 20 one-token groups: 1..20
    feed(tracker, values, [0.0] * 20)
    s = tracker.summary()
    assert s.bottom_group == pytest.approx(1.5)  # lowest 2 of 20: 1 and 2
    assert s.lowest_group == 1.0


def test_a_stream_shorter_than_the_window_is_one_group() -> None:
    tracker = StreamConfidence(window=10, tail=4)
    feed(tracker, [1.0, 2.0, 6.0], [0.5, 0.5, 2.0])
    s = tracker.summary()
    assert s.lowest_group == pytest.approx(3.0)
    assert s.bottom_group == pytest.approx(3.0)
    assert s.lows == ()
    assert s.first_below(100.0) is None  # no full window: an online stop never saw one


def test_no_tokens_gives_zeros_and_bad_sizes_are_refused() -> None:
    s = StreamConfidence(window=4, tail=4).summary()
    assert (s.tokens, s.mean_entropy, s.lowest_group) == (0, 0.0, 0.0)
    with pytest.raises(ValueError, match="window and tail"):
        StreamConfidence(window=0)


def test_summary_round_trips_through_its_record() -> None:
    tracker = StreamConfidence(window=2, tail=2)
    feed(tracker, [1.0, 3.0, 0.5, 0.25], [0.1, 0.2, 0.3, 0.4])
    s = tracker.summary()
    again = ConfidenceSummary.from_record(s.to_record())
    assert again == s


# -- in the solve loop (replay engine) -------------------------------------------------------------

PID = "c1"


def sure(confidences: list[float]) -> tuple[TokenLogprob, ...]:
    """Tokens whose one alternative has logprob -c: token confidence c."""
    return tuple(TokenLogprob(i, -c, ((i, -c),)) for i, c in enumerate(confidences))


def segment(text: str, confidences: list[float]) -> ReplaySegment:
    return ReplaySegment(text, len(confidences), "stop", logprobs=sure(confidences))


def cot_config(n: int, **confidence: object) -> Config:
    cfg = Config()
    cfg.solve.num_streams = n
    cfg.solve.stop_policy = "all"
    cfg.solve.prompt = "cot"
    for key, value in confidence.items():
        setattr(cfg.solve.confidence, key, value)
    return cfg


def solve(engine: ReplayEngine, cfg: Config, tracer: TraceWriter | None = None) -> ProblemResult:
    async def go() -> ProblemResult:
        return await Controller(engine, None, cfg, tracer=tracer).solve(PID, "What is 2+2?")

    return asyncio.run(go())


def test_defaults_ask_for_no_logprobs_and_vote_by_majority() -> None:
    seeds = [stream_seed(0, PID, i) for i in range(2)]
    engine = ReplayEngine({s: ["\\boxed{4}"] for s in seeds})
    result = solve(engine, cot_config(2))
    assert all(r.logprobs == 0 for r in engine.requests)
    assert result.vote.rule == "majority"
    assert all(s.confidence is None for s in result.streams)


def test_deepconf_online_stop_cuts_the_stream_at_the_token_and_it_does_not_vote(
    tmp_path: Path,
) -> None:
    seeds = [stream_seed(0, PID, i) for i in range(3)]
    steady = [3.0] * 12
    falling = [3.0, 3.0, 3.0, 3.0, 1.0, 1.0] + [3.0] * 30  # windows of 2: (3+1)/2 = 2, then 1
    text = "\\boxed{9} " + "x" * 40
    engine = ReplayEngine({
        seeds[0]: [segment("So \\boxed{4}. " + "y" * 12, steady)],
        seeds[1]: [segment(text, falling)],
        seeds[2]: [segment("Also \\boxed{4}!" + "z" * 12, steady)],
    }, yield_every=1)  # fmt: skip
    cfg = cot_config(3, stop="deepconf", stop_threshold=2.0, window=2, tail=4, logprobs=1)
    with TraceWriter(tmp_path / "t.jsonl") as tracer:
        result = solve(engine, cfg, tracer)
    victim = result.streams[1]
    assert victim.end == "low_confidence"
    assert victim.end_detail == "window confidence 1.000 < threshold 2.000 at token 6"
    assert victim.confidence is not None and victim.confidence["tokens"] == 6
    assert victim.answer == 9  # its partial text has an answer, but it does not vote
    assert dict(result.vote.counts) == {4: 2}
    assert engine.cancelled == [victim.request_id] and engine.num_running() == 0
    events = list(read_trace(tmp_path / "t.jsonl"))
    ends = {e["stream"]: e for e in events if e["event"] == "stream_end"}
    assert ends[1]["end"] == "low_confidence" and "at token 6" in ends[1]["end_detail"]
    assert ends[0]["end"] == "stop" and ends[0]["end_detail"] is None
    assert ends[0]["confidence"]["lowest_group"] == pytest.approx(3.0)
    segments = [e for e in events if e["event"] == "segment" and e["stream"] == 1]
    assert len(segments[0]["logprobs"]) == 6


def test_the_warmup_sets_the_threshold_from_the_first_finished_streams() -> None:
    seeds = [stream_seed(0, PID, i) for i in range(4)]
    # Three short streams finish first with lowest groups 2, 4 and 6; the 50th percentile of
    # the first two (warmup 2) is 3. The long stream dips to 2.5 from token 30: stopped there.
    long_one = [5.0] * 29 + [2.5] * 40
    engine = ReplayEngine({
        seeds[0]: [segment("\\boxed{1}", [2.0, 2.0])],
        seeds[1]: [segment("\\boxed{1}", [4.0, 4.0])],
        seeds[2]: [segment("\\boxed{2}", [6.0, 6.0])],
        seeds[3]: [segment("\\boxed{3}" + "w" * 80, long_one)],
    }, yield_every=1)  # fmt: skip
    cfg = cot_config(4, stop="deepconf", stop_warmup=2, stop_percentile=50.0, window=2,
                     logprobs=1)  # fmt: skip
    result = solve(engine, cfg)
    last = result.streams[3]
    assert last.end == "low_confidence"
    assert last.end_detail == "window confidence 2.500 < threshold 3.000 at token 31"
    assert [s.end for s in result.streams[:3]] == ["stop"] * 3


def test_leader_policy_stops_once_a_stream_is_dropped_for_confidence() -> None:
    seeds = [stream_seed(0, PID, i) for i in range(3)]
    engine = ReplayEngine({
        seeds[0]: [segment("\\boxed{4}", [3.0, 3.0])],
        seeds[1]: [segment("\\boxed{9} " + "x" * 60, [0.5] * 60)],  # dropped at token 2
        seeds[2]: [segment("\\boxed{4} " + "y" * 90, [3.0] * 90)],
    }, yield_every=1)  # fmt: skip
    cfg = cot_config(3, stop="deepconf", stop_threshold=1.0, window=2, logprobs=1)
    cfg.solve.stop_policy = "leader"
    result = solve(engine, cfg)
    assert result.streams[1].end == "low_confidence"
    # 4 has 1 vote; with the dropped stream gone the runner-up (0) plus the one stream still
    # running is 1 <= 1: the leader stops the problem.
    assert result.stop_reason.startswith("leader: 4 has 1")
    assert result.streams[2].end == "cancelled" and result.answer == 4


def test_select_rule_from_config_and_recorded_logprobs_replay(tmp_path: Path) -> None:
    seeds = [stream_seed(0, PID, i) for i in range(3)]
    engine = ReplayEngine({
        seeds[0]: [segment("\\boxed{7}", [0.01, 0.01])],  # entropy 0.0099: weight 100
        seeds[1]: [segment("\\boxed{8}", [3.0, 3.0])],  # entropy 3 e^-3 = 0.149: weight 6.7
        seeds[2]: [segment("\\boxed{8}", [3.0, 3.0])],
    })  # fmt: skip
    cfg = cot_config(3)
    cfg.solve.select = "entropy"
    trace = tmp_path / "t.jsonl"
    with TraceWriter(trace) as tracer:
        result = solve(engine, cfg, tracer)
    assert all(r.logprobs == 5 for r in engine.requests)  # asked for by the rule
    assert result.vote.rule == "entropy" and result.answer == 7
    # The trace replays with its logprobs: the same confidence, the same choice.
    replay = ReplayEngine.from_config(EngineConfig("replay", str(trace)))
    again = solve(replay, cfg)
    assert again.answer == 7
    assert [s.confidence for s in again.streams] == [s.confidence for s in result.streams]


def test_bad_confidence_settings_are_refused_with_the_key() -> None:
    cfg = cot_config(1, stop="sometimes")
    with pytest.raises(ValueError, match=r"solve\.confidence\.stop must be one of none, deepconf"):
        Controller(ReplayEngine({}), None, cfg)
    cfg = cot_config(1, window=0)
    with pytest.raises(ValueError, match=r"solve\.confidence\.window must be >= 1"):
        Controller(ReplayEngine({}), None, cfg)
    cfg = cot_config(1)
    cfg.solve.select = "best"
    with pytest.raises(ValueError, match="unknown selection rule 'best'"):
        Controller(ReplayEngine({}), None, cfg)
