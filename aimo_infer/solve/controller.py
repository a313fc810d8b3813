"""The solve loop: n seeded TIR streams per problem, voted, stopped early, cut at the deadline.

The controller only orchestrates: extraction, voting, stopping and formatting are pure
functions in their own modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aimo_infer.backends.base import (
    Engine,
    GenerationRequest,
    TokenLogprob,
    find_stop,
    logprobs_to_json,
)
from aimo_infer.config import Config
from aimo_infer.solve.answer import extract_answer, prose
from aimo_infer.solve.confidence import ConfidenceSummary, StreamConfidence
from aimo_infer.solve.cutoff import CANCEL_GRACE_S, cancel_in_background, cut_grace, end_tasks
from aimo_infer.solve.faults import raised_by_harness
from aimo_infer.solve.genselect import GenSelectRecord
from aimo_infer.solve.genselect_run import maybe_genselect
from aimo_infer.solve.harmony import HarmonyLoop, answer_text
from aimo_infer.solve.policies import StopPolicy, parse_policy
from aimo_infer.solve.prompts import load_profile, render_prompt
from aimo_infer.solve.select import ConfidencePlan, OnlineStop
from aimo_infer.solve.stream import CodeCall, Stream, StreamStatus, votes
from aimo_infer.solve.tir import (
    NO_CODE_FEEDBACK,
    CodeBlock,
    CodeBlockWatcher,
    code_limit_reached,
    execution_feedback,
    format_output,
    loose_code_block,
    output_markers,
)
from aimo_infer.solve.vote import Answer, Ballot, VoteResult, select
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner, Session

log = logging.getLogger(__name__)

__all__ = ["CANCEL_GRACE_S", "Controller", "ProblemResult", "stream_seed"]


@dataclass
class _Live:
    """The segment a stream is reading: what arrived so far, kept outside the stream's task so
    that a stream abandoned mid-segment still keeps (and votes with) the text it received."""

    start: int = 0  # len(stream.text) when the segment began
    pieces: list[str] = field(default_factory=list)
    tokens: int = 0
    cut: int | None = None  # absolute text index past a closed code block or output marker
    block: CodeBlock | None = None
    finish: str = "error"
    error: str | None = None
    frozen: bool = False  # the controller took a snapshot: the task no longer owns the result
    logprobs: list[TokenLogprob] = field(default_factory=list)  # this segment's, if asked for
    tracker: StreamConfidence | None = None  # the stream's confidence, across its segments

    def begin(self, start: int) -> None:
        self.start, self.pieces, self.tokens, self.cut, self.block = start, [], 0, None, None
        self.finish, self.error, self.logprobs = "error", None, []


@dataclass
class ProblemResult:
    """What solving one problem produced."""

    problem_id: str
    answer: Answer | None
    vote: VoteResult
    stop_reason: str
    streams: list[Stream]
    elapsed_s: float
    prompt: str
    abandoned: int = 0  # streams whose task would not end after cancel (the engine holds them)
    genselect: GenSelectRecord | None = None  # None: GenSelect switched off

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0


def stream_seed(run_seed: int, problem_id: str, index: int) -> int:
    """A stable 31-bit seed per (run, problem, stream): reruns reproduce, streams differ."""
    digest = hashlib.blake2b(f"{run_seed}:{problem_id}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFFFFFF


class Controller:
    """Solves problems on one engine with one sandbox, as the config says."""

    def __init__(
        self,
        engine: Engine,
        runner: CodeRunner | None,
        config: Config,
        tracer: TraceWriter | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.engine = engine
        self.runner = runner
        self.config = config
        self.tracer = tracer
        self.clock = clock
        self.profile = load_profile(config.solve.prompt)
        self.policy: StopPolicy = parse_policy(config.solve.stop_policy)
        self.confidence = ConfidencePlan.from_config(config.solve)
        self._online: dict[str, OnlineStop] = {}  # per problem being solved
        if self.profile.runs_code and runner is None:
            raise ValueError(f"prompt profile {self.profile.name!r} runs code: a sandbox is needed")
        self.harmony: HarmonyLoop | None = None  # the Harmony profile's loop (solve/harmony.py)
        if self.profile.tool_format.name == "harmony":
            self.harmony = HarmonyLoop(self)

    def render(self, problem: str) -> str:
        """The prompt text for a problem, through the engine's chat template."""
        if self.harmony is not None:
            return self.harmony.render(problem)
        messages = self.profile.messages(problem, self.config.solve.tir.max_code_calls)
        return render_prompt(messages, self.engine.info.tokenizer_path)

    def _trace(self, event: str, **fields: object) -> None:
        if self.tracer is not None:
            self.tracer.write(event, **fields)

    async def solve(
        self, problem_id: str, problem: str, deadline: float | None = None
    ) -> ProblemResult:
        """Run the streams of one problem until a policy fires, all finish, or ``deadline``
        (a ``clock()`` time) passes; every stream still running is cancelled on the engine.

        Returns by ``deadline`` plus the cut grace (``cut_grace``) whatever the engine does: a
        stream that will not end is abandoned with the text it had received."""
        cfg = self.config.solve
        started = self.clock()
        prompt = self.render(problem)
        streams = [
            Stream(index=i, seed=stream_seed(cfg.run_seed, problem_id, i))
            for i in range(cfg.num_streams)
        ]
        self._trace("problem_start", problem_id=problem_id, problem=problem, prompt=prompt,
                    seeds=[s.seed for s in streams], deadline_in_s=None if deadline is None
                    else deadline - started)
        grace = cut_grace(None if deadline is None else deadline - started)
        live = {s.index: _Live() for s in streams}
        tasks = {
            asyncio.create_task(self._run_stream(problem_id, s, prompt, live[s.index])): s
            for s in streams
        }
        self._online[problem_id] = OnlineStop(self.confidence.stop)
        finished: list[Stream] = []
        stop_reason = "all finished"
        pending = set(tasks)

        async def cut(victims: set[asyncio.Task[None]], end: str) -> None:
            finished.extend(await self._cut(problem_id, victims, tasks, live, streams, end,
                                            grace))

        try:
            while pending:
                next_deadline = self._next_deadline(streams, deadline)
                timeout = None if next_deadline is None else max(0.0, next_deadline - self.clock())
                done, pending = await asyncio.wait(
                    pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
                )
                finished.extend(sorted((tasks[t] for t in done),
                                       key=lambda s: (s.finished_at or 0.0, s.index)))
                now = self.clock()
                if deadline is not None and now >= deadline and pending:
                    stop_reason = "deadline"
                    await cut(pending, "deadline")
                    break
                expired = self._expired_streams(pending, tasks, now)
                if expired:
                    pending -= expired
                    await cut(expired, "deadline")
                answers = [s.answer for s in finished if votes(s.end)]
                dropped = sum(s.end == "low_confidence" for s in finished)  # can no longer vote
                reason = self.policy.fired(answers, cfg.num_streams - dropped)
                if reason is not None and pending:
                    stop_reason = reason
                    await cut(pending, "cancelled")
                    break
        except BaseException:  # solve() itself cancelled: leave nothing running behind
            self._drop(tasks)
            raise
        finally:
            self._online.pop(problem_id, None)
        vote = select([_ballot(s) for s in finished if votes(s.end)], self.confidence.select)
        result = ProblemResult(problem_id, vote.answer, vote, stop_reason, streams,
                               self.clock() - started, prompt,
                               sum(1 for t in tasks if not t.done()))
        # GenSelect (off by default): on a split vote the model judges its own solutions.
        result = await maybe_genselect(self.engine, self.config, result, problem, deadline,
                                       self.clock, self._trace)
        self._trace("problem_end", problem_id=problem_id, answer=result.answer,
                    votes=[[a, c] for a, c in vote.counts], select=vote.rule,
                    scores=[[a, w] for a, w in vote.scores], stop_reason=stop_reason,
                    elapsed_s=result.elapsed_s, total_tokens=result.total_tokens)
        return result

    def _next_deadline(self, streams: list[Stream], deadline: float | None) -> float | None:
        timeout = self.config.solve.stream_timeout_s
        candidates = [] if deadline is None else [deadline]
        if timeout is not None:
            candidates += [s.started_at + timeout for s in streams if not s.finished]
        return min(candidates) if candidates else None

    def _expired_streams(
        self, pending: set[asyncio.Task[None]], tasks: dict[asyncio.Task[None], Stream],
        now: float,
    ) -> set[asyncio.Task[None]]:
        timeout = self.config.solve.stream_timeout_s
        if timeout is None:
            return set()
        return {t for t in pending if now >= tasks[t].started_at + timeout}

    async def _cut(
        self, problem_id: str, victims: set[asyncio.Task[None]],
        tasks: dict[asyncio.Task[None], Stream], live: dict[int, _Live], streams: list[Stream],
        end: str, grace: float,
    ) -> list[Stream]:
        """Cancel streams at once (on the engine first: frees its slots; then their tasks) and
        return them in stream order, so that streams cut together vote in a fixed order. A
        stream still running after the grace is abandoned: a snapshot of it takes its place."""
        request_ids = []
        for task in victims:
            stream = tasks[task]
            if stream.end is None:
                stream.end = end  # type: ignore[assignment]
            if stream.status is StreamStatus.GENERATING:
                request_ids.append(stream.request_id)
            else:
                task.cancel()
        cancel_in_background(self.engine.cancel, sorted(request_ids))
        late = await end_tasks(victims, grace)
        cut = []
        for task in sorted(victims, key=lambda t: tasks[t].index):
            stream = tasks[task]
            if task in late:
                log.warning("stream %d did not end after cancel; abandoning it", stream.index)
                stream = self._abandon(problem_id, stream, live[stream.index])
                streams[stream.index] = stream
            cut.append(stream)
        return cut

    def _abandon(self, problem_id: str, stream: Stream, live: _Live) -> Stream:
        """A finished copy of a stream whose task will not end: its text so far votes."""
        snapshot = dataclasses.replace(stream, code_calls=list(stream.code_calls),
                                       hidden=list(stream.hidden))
        if stream.status is StreamStatus.GENERATING:
            live.finish = "cancelled"
            self._commit(problem_id, snapshot, live)
        live.frozen = True
        if stream.status is not StreamStatus.FINISHED:  # else stuck closing its sandbox session
            snapshot.error = snapshot.error or "the stream did not end after cancel"
            self._finish(problem_id, snapshot)
        return snapshot

    def _drop(self, tasks: dict[asyncio.Task[None], Stream]) -> None:
        """Cancel every unfinished stream without waiting (solve() is being cancelled)."""
        running = [(t, s) for t, s in tasks.items() if not t.done()]
        for task, stream in running:
            if stream.end is None:
                stream.end = "cancelled"
            task.cancel()
        cancel_in_background(self.engine.cancel, [s.request_id for _, s in running
                                                  if s.status is StreamStatus.GENERATING])

    def _finish(self, problem_id: str, stream: Stream) -> None:
        """Mark a stream finished, extract its answer from its prose, trace its end."""
        stream.status = StreamStatus.FINISHED
        stream.finished_at = self.clock()
        # Harmony answers from its final channel; text loops from the model's prose alone
        text = (answer_text(stream.text) if self.harmony is not None
                else prose(stream.text, stream.hidden))
        stream.answer = extract_answer(text, self.config.solve.profile)
        self._stream_finished(problem_id, stream)
        self._trace("stream_end", problem_id=problem_id, stream=stream.index,
                    seed=stream.seed, end=stream.end, answer=stream.answer,
                    tokens=stream.tokens, code_calls=stream.num_code_calls,
                    elapsed_s=stream.elapsed_s, error=stream.error,
                    end_detail=stream.end_detail, confidence=stream.confidence)

    async def _run_stream(self, problem_id: str, stream: Stream, prompt: str,
                          live: _Live) -> None:
        """Generate, pause on each code block, run it, append its output, resume; never raises
        (an engine raising CancelledError or SystemExit ends this stream as an error)."""
        sessions: list[Session] = []  # at most one, opened at the first code block
        stream.started_at = self.clock()
        try:
            if self.harmony is not None:  # Harmony: token in, token out, tool calls by token
                await self.harmony.run(problem_id, stream, prompt, sessions)
            else:
                await self._generate_loop(problem_id, stream, prompt, sessions, live)
        except asyncio.CancelledError:
            if stream.end is None:  # nobody cut it: the engine raised CancelledError itself
                stream.end, stream.error = "error", "the engine raised CancelledError"
        except (Exception, SystemExit) as exc:  # a broken engine or sandbox ends this stream
            log.error("stream %d of %s failed: %s: %s", stream.index, problem_id,
                      type(exc).__name__, exc, exc_info=not isinstance(exc, SystemExit))
            if stream.end is None:
                stream.end = "error"
            stream.error = f"{type(exc).__name__}: {exc}"
            stream.harness_bug = raised_by_harness(exc)
        finally:
            if not live.frozen:
                self._finish(problem_id, stream)
            for session in sessions:
                await asyncio.shield(self._close_session(session))

    def _low_confidence(
        self, problem_id: str, stream: Stream, tracker: StreamConfidence,
        entries: tuple[TokenLogprob, ...],
    ) -> bool:
        """Feed new tokens to the stream's confidence; True when the online stop ends it now."""
        online = self._online.get(problem_id)
        stopped = False
        for entry in entries:
            tracker.add(entry)
            if stream.end is None and online is not None and online.rule is not None:
                why = online.check(tracker)
                if why is not None:
                    stream.end, stream.end_detail = "low_confidence", why
                    stopped = True
        return stopped

    def _stream_finished(self, problem_id: str, stream: Stream) -> None:
        """A finished stream's confidence joins its problem's online-stop warmup."""
        online = self._online.get(problem_id)
        if online is not None and stream.confidence is not None:
            online.finished(ConfidenceSummary.from_record(stream.confidence),
                            votes(stream.end))

    async def _close_session(self, session: Session) -> None:
        try:
            await session.close()
        except Exception:
            log.exception("closing a sandbox session failed")

    def _commit(self, problem_id: str, stream: Stream, live: _Live) -> None:
        """Append the segment read so far to ``stream`` (once) and trace it."""
        if live.frozen:
            return
        text = "".join(live.pieces)
        if live.cut is not None:
            text = text[: live.cut - live.start]
        stream.tokens += live.tokens
        stream.text += text
        if live.tracker is not None:
            stream.confidence = live.tracker.summary().to_record()
        self._trace("segment", problem_id=problem_id, stream=stream.index, seed=stream.seed,
                    text=text, tokens=live.tokens,
                    finish_reason="stop" if live.cut is not None else live.finish,
                    **({"logprobs": logprobs_to_json(live.logprobs)} if live.logprobs else {}))
        live.begin(len(stream.text))

    async def _read_segment(self, problem_id: str, request: GenerationRequest, stream: Stream,
                            live: _Live) -> None:
        """Read one request's deltas into ``live`` until its finish delta (nothing after it is
        read); stop taking text at a closed code block or an output marker."""
        fmt = self.profile.tool_format
        watcher = CodeBlockWatcher(fmt, live.start)
        markers = output_markers(fmt)
        longest = max((len(m) for m in markers), default=0)
        text = stream.text
        deltas = self.engine.generate(request)
        try:
            async for delta in deltas:
                if (live.tracker is not None and delta.logprobs
                        and stream.end != "low_confidence"):  # stopped: later tokens don't count
                    live.logprobs.extend(delta.logprobs)
                    if self._low_confidence(problem_id, stream, live.tracker,
                                            delta.logprobs) and delta.finish_reason is None:
                        cancel_in_background(self.engine.cancel, [request.request_id])
                if delta.text:
                    live.tokens += delta.num_tokens
                    if live.cut is None:
                        text += delta.text
                        live.pieces.append(delta.text)
                        live.block = watcher.check(text, delta.text)
                        if live.block is not None:
                            live.cut = live.block.end
                        elif markers:
                            at = find_stop(text, markers,
                                           max(live.start, len(text) - len(delta.text) - longest))
                            live.cut = at if at >= 0 else None
                        if live.cut is not None and delta.finish_reason is None:
                            # the block (or marker) is all we need
                            cancel_in_background(self.engine.cancel, [request.request_id])
                if delta.finish_reason is not None:
                    live.finish, live.error = delta.finish_reason, delta.error
                    break
        finally:
            aclose = getattr(deltas, "aclose", None)
            if aclose is not None:
                try:
                    await aclose()
                except Exception:
                    log.debug("closing the delta stream of %s failed", request.request_id)

    async def _generate_loop(
        self, problem_id: str, stream: Stream, prompt: str, sessions: list[Session],
        live: _Live,
    ) -> None:
        cfg = self.config.solve
        sampling, tir = cfg.sampling, cfg.tir
        fmt = self.profile.tool_format
        live.tracker = self.confidence.tracker()  # across segments: generated tokens only
        while stream.end is None:
            remaining = sampling.max_tokens - stream.tokens
            if remaining <= 0:
                stream.end = "length"
                break
            live.begin(len(stream.text))
            request = GenerationRequest(
                request_id=f"{problem_id}/{stream.index}/{stream.segments}",
                prompt=prompt + stream.text, seed=stream.seed,
                temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                min_p=sampling.min_p, stop=fmt.stop, max_tokens=remaining,
                logprobs=self.confidence.logprobs,
            )
            stream.request_id = request.request_id
            stream.segments += 1
            stream.status = StreamStatus.GENERATING
            try:
                await self._read_segment(problem_id, request, stream, live)
            finally:
                segment_start, block, cut, finish = live.start, live.block, live.cut, live.finish
                error = live.error
                if not live.frozen and stream.end is not None and finish == "error":
                    finish = "cancelled"
                    live.finish = finish
                self._commit(problem_id, stream, live)
            if cut is None:
                if stream.end is None:  # not cut by the controller
                    if finish in ("stop", "length"):
                        stream.end = finish  # type: ignore[assignment]
                    else:  # an engine error, or a cancel nobody asked for
                        stream.end = "error"
                        stream.error = error or f"engine ended the request: {finish}"
                break
            if stream.end is not None:
                break
            if block is None:  # the model wrote an output marker itself: see tir.py
                marker_at = max(i for m in output_markers(fmt)
                                if (i := stream.text.rfind(m, segment_start)) >= 0)
                block = (loose_code_block(stream.text, segment_start, marker_at)
                         or CodeBlock("", marker_at, marker_at))
                stream.text = stream.text[: block.end]  # the marker (and any output) dropped
            if code_limit_reached(stream.num_code_calls, tir.max_code_calls):
                stream.end = "code_limit"
                break
            await self._run_block(problem_id, stream, block, sessions)

    async def _run_block(self, problem_id: str, stream: Stream, block: CodeBlock,
                         sessions: list[Session]) -> None:
        """Run one code block and append what the model is shown; code and output are hidden
        from answer extraction."""
        tir = self.config.solve.tir
        stream.status = StreamStatus.EXECUTING
        if block.code.strip():
            if not sessions:
                sessions.append(await self.runner.open_session())  # type: ignore[union-attr]
            result = await sessions[0].run(block.code, timeout=tir.code_timeout_s)
            status, elapsed = result.status, result.elapsed_s
            feedback = execution_feedback(result, tir.output_max_chars)
        else:
            status, elapsed, feedback = "no_code", 0.0, NO_CODE_FEEDBACK
        stream.code_calls.append(CodeCall(block.code, status, feedback, elapsed))
        output_at = len(stream.text)
        stream.text += format_output(feedback)
        stream.hidden += [(block.start, block.end), (output_at, len(stream.text))]
        self._trace("code", problem_id=problem_id, stream=stream.index, code=block.code,
                    status=status, feedback=feedback, elapsed_s=elapsed)


def _ballot(stream: Stream) -> Ballot:
    summary = None if stream.confidence is None else ConfidenceSummary.from_record(stream.confidence)
    return Ballot(stream.answer, summary)
