"""Policy simulator: re-score recorded streams under other settings without running a model.

A problem is a set of streams, each with an answer and the time it arrives. The simulator
feeds the arrivals, in time order, to the same stop-policy objects and the same vote the
controller uses, cuts at the deadline the same ``TimeBudget`` grants, and reports the answer
and the time. Two inputs: a dry-run directory (``runs.py`` records) and per-sample traces of
real models (``sample_traces.py``).

What a recording cannot tell, and what is assumed instead:
- A stream the run cut (policy cancel, problem deadline) has an unknown final answer. It keeps
  its recorded partial answer when the simulated deadline cuts it no earlier than the recorded
  cut; if the simulation lets it run to its end, it votes "no answer" (counted in
  ``cut_answers``, with the answers a simulated deadline cuts off). Its end is estimated: it keeps its own generation rate and stops at the
  median length of the run's self-ended streams that were longer than it was when cut
  (max tokens when none were).
- A stream still running at a simulated deadline it did not reach in the recording votes its
  recorded partial answer if it had one by then, else nothing.
- ``tok_s_scale`` divides generation time (not code time) by the scale; the rate does not
  change with the number of streams running.
- Selection rules re-choose from the recorded confidence of each stream (``--select``). The
  online confidence stop is replayed from each stream's recorded window lows: a stream stops
  at the first token whose window confidence fell below the threshold, timed in proportion to
  its tokens. With a warmup threshold (known only once the warmup streams finished) a stream
  whose window fell below it earlier is assumed still below then, and stops at that moment.
  A stream the recording stopped for low confidence is a cut stream.
"""

from __future__ import annotations

import bisect
import dataclasses
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field

from aimo_infer.config import BudgetConfig, ConfigError
from aimo_infer.errors import DataError
from aimo_infer.evaluate.run_budget import solve_window
from aimo_infer.evaluate.runs import ProblemRecord, StreamRecord
from aimo_infer.kaggle.budget import TimeBudget
from aimo_infer.solve.confidence import ConfidenceSummary
from aimo_infer.solve.policies import ConfidenceStop, StopPolicy
from aimo_infer.solve.vote import Answer, Ballot, SelectSettings, VoteResult, select


@dataclass(frozen=True)
class SimStream:
    """A stream as the simulator sees it."""

    answer: Answer | None  # its final answer (a cut stream: its answer when cut)
    finish_s: float  # when it ends by itself (a cut stream: an estimate)
    tokens: int  # tokens when it ends (a cut stream: an estimate)
    cut_s: float | None = None  # set for a stream the recording cut: its answer then is known
    confidence: ConfidenceSummary | None = None  # recorded with logprobs on


@dataclass(frozen=True)
class SimProblem:
    """A problem to re-score: its streams, what each answer is worth, fixed costs."""

    problem_id: str
    source: str
    streams: tuple[SimStream, ...]
    answer_correct: dict[Answer, bool] = field(default_factory=dict)
    has_reference: bool = True
    overhead_s: float = 0.0  # time charged beyond the decision (cancelling, prompt rendering)

    def is_correct(self, answer: Answer | None) -> bool | None:
        if not self.has_reference:
            return None
        return answer is not None and self.answer_correct.get(answer, False)


@dataclass(frozen=True)
class SimOutcome:
    """What the controller would have done on one problem."""

    problem_id: str
    source: str
    vote: VoteResult
    stop_reason: str
    decision_s: float  # when it stopped waiting
    used_s: float  # charged to the budget: decision plus overhead
    deadline_s: float | None
    tokens: int
    cut_answers: int  # votes counted as "no answer" because a cut hid the stream's answer
    correct: bool | None

    @property
    def answer(self) -> Answer | None:
        return self.vote.answer


def simulate_problem(problem: SimProblem, policy: StopPolicy,
                     deadline_s: float | None = None,
                     selection: SelectSettings | None = None,
                     confidence_stop: ConfidenceStop | None = None) -> SimOutcome:
    """The controller's loop on known arrivals: vote as streams arrive, stop when the policy
    fires with streams still running, cut what is left at the deadline; streams the online
    confidence stop would have cut end early and do not vote."""
    streams = list(problem.streams)
    num_streams = len(streams)
    stopped: set[int] = set()
    arrived: set[int] = set()
    threshold = None if confidence_stop is None else confidence_stop.threshold_from([])
    warmup: list[float] = []

    def apply_threshold(now: float) -> None:
        assert threshold is not None
        for i, stream in enumerate(streams):
            if i in arrived or i in stopped:
                continue
            at = _confidence_stop_at(stream, threshold, now)
            if at is not None:
                streams[i] = at
                stopped.add(i)

    if threshold is not None:
        apply_threshold(0.0)
    answers: list[Answer | None] = []
    ballots: list[Ballot] = []
    cut = dropped = 0
    stop_reason, decision = "all finished", 0.0
    while len(arrived) < num_streams:
        i = min((j for j in range(num_streams) if j not in arrived),
                key=lambda j: (streams[j].finish_s, j))  # fmt: skip
        stream = streams[i]
        if deadline_s is not None and stream.finish_s > deadline_s:
            stop_reason, decision = "deadline", deadline_s
            break
        arrived.add(i)
        decision = stream.finish_s
        if i in stopped:
            dropped += 1
        elif stream.cut_s is None:
            answers.append(stream.answer)
            ballots.append(Ballot(stream.answer, stream.confidence))
            summary = stream.confidence
            if (confidence_stop is not None and threshold is None and summary is not None
                    and summary.tokens > 0):  # fmt: skip
                warmup.append(summary.lowest_group)
                threshold = confidence_stop.threshold_from(warmup)
                if threshold is not None:
                    apply_threshold(stream.finish_s)
        else:
            answers.append(None)
            ballots.append(Ballot(None))
            cut += 1
        reason = policy.fired(answers, num_streams - dropped)
        if reason is not None and len(arrived) < num_streams:
            stop_reason = reason
            break
    if stop_reason == "deadline":
        for i in range(num_streams):  # still running: cut, their partial answers vote
            if i in arrived:
                continue
            stream = streams[i]
            known = stream.cut_s is not None and stream.cut_s <= decision
            answers.append(stream.answer if known else None)
            ballots.append(Ballot(stream.answer if known else None, stream.confidence))
            cut += stream.answer is not None and not known
    vote = select(ballots, selection or SelectSettings())
    tokens = sum(_tokens_at(s, decision) for s in streams)
    return SimOutcome(problem.problem_id, problem.source, vote, stop_reason, decision,
                      decision + problem.overhead_s, deadline_s, tokens, cut,
                      problem.is_correct(vote.answer))


def _confidence_stop_at(stream: SimStream, threshold: float, now: float) -> SimStream | None:
    """The stream as the online stop would end it (at its first window below ``threshold``,
    not before ``now``), or None when it would not stop before its own end."""
    summary = stream.confidence
    if summary is None or summary.tokens <= 0:
        return None
    at = summary.first_below(threshold)
    if at is None:
        return None
    recorded_end = stream.cut_s if stream.cut_s is not None else stream.finish_s
    when = max(now, recorded_end * at / summary.tokens)
    if when >= stream.finish_s:
        return None
    tokens = max(at, int(stream.tokens * when / stream.finish_s)) if stream.finish_s > 0 else at
    return dataclasses.replace(stream, finish_s=when, tokens=min(tokens, stream.tokens),
                               cut_s=None)


def _tokens_at(stream: SimStream, t: float) -> int:
    if stream.finish_s <= t or stream.finish_s <= 0:
        return stream.tokens
    return int(stream.tokens * max(0.0, t) / stream.finish_s)


@dataclass(frozen=True)
class RunOutcome:
    """A whole simulated run, in serving order."""

    problems: tuple[SimOutcome, ...]

    @property
    def num_correct(self) -> int:
        return sum(bool(p.correct) for p in self.problems)

    @property
    def total_s(self) -> float:
        return sum(p.used_s for p in self.problems)

    @property
    def total_tokens(self) -> int:
        return sum(p.tokens for p in self.problems)


def simulate_run(problems: Sequence[SimProblem], policy: StopPolicy,
                 budget: BudgetConfig | None = None, wind_down_s: float = 0.0,
                 selection: SelectSettings | None = None,
                 confidence_stop: ConfidenceStop | None = None) -> RunOutcome:
    """Problems one after another, each with the deadline the time budget grants it.

    The budget runs on a virtual clock that advances by the time each problem is charged,
    exactly as the dry run drives it; ``budget=None`` means no deadline.
    """
    if budget is None:
        return RunOutcome(tuple(simulate_problem(p, policy, None, selection, confidence_stop)
                                for p in problems))  # fmt: skip
    clock = 0.0
    time_budget = TimeBudget(budget, start=clock, num_problems=len(problems))
    outcomes = []
    for problem in problems:
        allotment = time_budget.allot(clock)
        deadline = solve_window(allotment.seconds, wind_down_s)
        outcome = simulate_problem(problem, policy, deadline, selection, confidence_stop)
        time_budget.settle(allotment, outcome.used_s)
        clock += outcome.used_s
        outcomes.append(outcome)
    return RunOutcome(tuple(outcomes))


# --- recorded dry runs -------------------------------------------------------------------


@dataclass(frozen=True)
class LengthModel:
    """Where a cut stream would have ended: the run's self-ended lengths and rates."""

    lengths: tuple[int, ...]  # sorted
    median_rate: float  # tokens per second of generation
    max_tokens: int

    @classmethod
    def from_records(cls, records: Sequence[ProblemRecord], max_tokens: int) -> LengthModel:
        ended = [s for r in records for s in r.streams if s.votes and not _was_cut(r, s)]
        rates = [s.tokens / g for s in ended if s.tokens > 0 and (g := _gen_s(s)) > 0]
        return cls(tuple(sorted(s.tokens for s in ended)),
                   statistics.median(rates) if rates else 1.0, max_tokens)

    def final_tokens(self, tokens_so_far: int) -> int:
        longer = self.lengths[bisect.bisect_right(self.lengths, tokens_so_far):]
        guess = longer[len(longer) // 2] if longer else self.max_tokens
        return max(tokens_so_far, min(guess, self.max_tokens))


def _gen_s(s: StreamRecord) -> float:
    return max(0.0, s.finish_s - s.start_s - s.code_s)


def _was_cut(record: ProblemRecord, s: StreamRecord) -> bool:
    """Cut by the controller (a policy, or the problem deadline); a per-stream timeout is the
    stream's own end, since the simulator does not change it."""
    return s.end in ("cancelled", "low_confidence") or (
        s.end == "deadline" and record.stop_reason == "deadline"
        and s.finish_s >= record.deadline_s
    )


def problem_from_record(record: ProblemRecord, lengths: LengthModel, num_streams: int | None = None,
                        tok_s_scale: float = 1.0) -> SimProblem:
    """A recorded problem as simulator input: its first ``num_streams`` streams (the seeds a
    run with that many streams uses), generation times divided by ``tok_s_scale``."""
    if tok_s_scale <= 0:
        raise ConfigError(f"tokens/s scale must be > 0, got {tok_s_scale}")
    recorded = sorted(record.streams, key=lambda s: s.index)
    n = len(recorded) if num_streams is None else num_streams
    if not 1 <= n <= len(recorded):
        raise DataError(f"{record.problem_id}: {n} streams asked, {len(recorded)} recorded")

    def scaled(s: StreamRecord, t: float) -> float:
        code_end = s.start_s + s.code_s
        return t if t <= code_end else code_end + (t - code_end) / tok_s_scale

    streams = []
    for s in recorded[:n]:
        confidence = ConfidenceSummary.from_record(s.confidence) if s.confidence else None
        if not _was_cut(record, s):
            streams.append(SimStream(s.answer, scaled(s, s.finish_s), s.tokens,
                                     confidence=confidence))
            continue
        cut_at = {"cancelled": record.decision_s, "low_confidence": s.finish_s}.get(
            s.end or "", record.deadline_s)
        gen_s = max(0.0, cut_at - s.start_s - s.code_s)
        rate = s.tokens / gen_s if s.tokens > 0 and gen_s > 0 else lengths.median_rate
        final = lengths.final_tokens(s.tokens)
        finish = max(s.finish_s, cut_at + (final - s.tokens) / rate)
        streams.append(SimStream(s.answer, scaled(s, finish), final, scaled(s, cut_at),
                                 confidence))
    answer_correct: dict[Answer, bool] = {}
    for s in record.streams:
        if s.answer is not None and s.correct is not None:
            answer_correct[s.answer] = s.correct
    if record.answer is not None and record.correct is not None:
        answer_correct[record.answer] = record.correct
    return SimProblem(record.problem_id, record.source, tuple(streams), answer_correct,
                      record.reference is not None,
                      # GenSelect's time is not overhead: simulated runs do not use it
                      max(0.0, record.used_s - record.genselect_s - record.decision_s))
