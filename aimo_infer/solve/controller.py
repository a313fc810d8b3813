"""The solve loop: n seeded TIR streams per problem, voted, stopped early, cut at the deadline.

The controller only orchestrates: extraction, voting, stopping and formatting are pure
functions in their own modules.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aimo_infer.backends.base import Engine, GenerationRequest, TokenLogprob, logprobs_to_json
from aimo_infer.config import Config
from aimo_infer.solve.answer import extract_answer
from aimo_infer.solve.confidence import ConfidenceSummary, StreamConfidence
from aimo_infer.solve.policies import StopPolicy, parse_policy
from aimo_infer.solve.prompts import load_profile, render_prompt
from aimo_infer.solve.select import ConfidencePlan, OnlineStop
from aimo_infer.solve.stream import CodeCall, Stream, StreamStatus
from aimo_infer.solve.tir import (
    CodeBlockWatcher,
    code_limit_reached,
    execution_feedback,
    format_output,
)
from aimo_infer.solve.vote import Answer, Ballot, VoteResult, select
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner, Session

log = logging.getLogger(__name__)

# Streams whose answer votes: those that ended by themselves, and those cut by a deadline
# (their partial text is searched). Streams cancelled by a policy do not vote.
_VOTING_ENDS = frozenset({"stop", "length", "code_limit", "deadline", "error"})
CANCEL_GRACE_S = 5.0


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

    @property
    def total_tokens(self) -> int:
        return sum(s.tokens for s in self.streams)

    @property
    def tokens_per_s(self) -> float:
        return self.total_tokens / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def to_record(self, with_text: bool = False) -> dict[str, object]:
        streams = []
        for s in self.streams:
            rec = s.to_record()
            if not with_text:
                rec.pop("text")
            streams.append(rec)
        return {
            "problem_id": self.problem_id,
            "answer": self.answer,
            "votes": [[a, c] for a, c in self.vote.counts],
            "num_missing": self.vote.num_missing,
            "stop_reason": self.stop_reason,
            "elapsed_s": self.elapsed_s,
            "total_tokens": self.total_tokens,
            "streams": streams,
        }


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
        if self.profile.tool_format.open and runner is None:
            raise ValueError(f"prompt profile {self.profile.name!r} runs code: a sandbox is needed")

    def render(self, problem: str) -> str:
        """The prompt text for a problem, through the engine's chat template."""
        messages = self.profile.messages(problem, self.config.solve.tir.max_code_calls)
        return render_prompt(messages, self.engine.info.tokenizer_path)

    def _trace(self, event: str, **fields: object) -> None:
        if self.tracer is not None:
            self.tracer.write(event, **fields)

    async def solve(
        self, problem_id: str, problem: str, deadline: float | None = None
    ) -> ProblemResult:
        """Run the streams of one problem until a policy fires, all finish, or ``deadline``
        (a ``clock()`` time) passes; every stream still running is cancelled on the engine."""
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
        tasks = {
            asyncio.create_task(self._run_stream(problem_id, s, prompt)): s for s in streams
        }
        self._online[problem_id] = OnlineStop(self.confidence.stop)
        finished: list[Stream] = []
        stop_reason = "all finished"
        pending = set(tasks)
        while pending:
            next_deadline = self._next_deadline(streams, deadline)
            timeout = None if next_deadline is None else max(0.0, next_deadline - self.clock())
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            finished.extend(sorted((tasks[t] for t in done), key=lambda s: s.finished_at or 0))
            now = self.clock()
            if deadline is not None and now >= deadline and pending:
                stop_reason = "deadline"
                await self._stop(pending, tasks, "deadline")
                finished.extend(tasks[t] for t in pending)
                break
            expired = self._expired_streams(pending, tasks, now)
            if expired:
                await self._stop(expired, tasks, "deadline")
                pending -= expired
                finished.extend(tasks[t] for t in expired)
            answers = [s.answer for s in finished if s.end in _VOTING_ENDS]
            dropped = sum(s.end == "low_confidence" for s in finished)  # can no longer vote
            reason = self.policy.fired(answers, cfg.num_streams - dropped)
            if reason is not None and pending:
                stop_reason = reason
                await self._stop(pending, tasks, "cancelled")
                finished.extend(tasks[t] for t in pending)
                break
        self._online.pop(problem_id, None)
        vote = select([_ballot(s) for s in finished if s.end in _VOTING_ENDS],
                      self.confidence.select)
        result = ProblemResult(problem_id, vote.answer, vote, stop_reason, streams,
                               self.clock() - started, prompt)
        self._trace("problem_end", problem_id=problem_id, answer=vote.answer,
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

    async def _stop(
        self, victims: set[asyncio.Task[None]], tasks: dict[asyncio.Task[None], Stream],
        end: str,
    ) -> None:
        """Cancel streams at once: on the engine first (frees its slots), then their tasks."""
        for task in victims:
            stream = tasks[task]
            if stream.end is None:
                stream.end = end  # type: ignore[assignment]
            if stream.status is StreamStatus.GENERATING:
                await self.engine.cancel(stream.request_id)
            elif stream.status is StreamStatus.EXECUTING:
                task.cancel()
        _, late = await asyncio.wait(victims, timeout=CANCEL_GRACE_S)
        for task in late:  # an engine that ignored cancel: close its stream from our side
            log.warning("stream %d ignored cancel; closing it", tasks[task].index)
            task.cancel()
        if late:
            await asyncio.wait(late)

    async def _run_stream(self, problem_id: str, stream: Stream, prompt: str) -> None:
        """Generate, pause on each code block, run it, append its output, resume; never raises."""
        sessions: list[Session] = []  # at most one, opened at the first code block
        stream.started_at = self.clock()
        try:
            await self._generate_loop(problem_id, stream, prompt, sessions)
        except asyncio.CancelledError:
            if stream.end is None:
                stream.end = "cancelled"
        except Exception as exc:  # a broken engine or sandbox ends this stream, not the problem
            log.exception("stream %d of %s failed", stream.index, problem_id)
            stream.end, stream.error = "error", f"{type(exc).__name__}: {exc}"
        finally:
            stream.status = StreamStatus.FINISHED
            stream.finished_at = self.clock()
            stream.answer = extract_answer(stream.text, self.config.solve.profile)
            self._stream_finished(problem_id, stream)
            for session in sessions:
                await asyncio.shield(self._close_session(session))
            self._trace("stream_end", problem_id=problem_id, stream=stream.index,
                        seed=stream.seed, end=stream.end, answer=stream.answer,
                        tokens=stream.tokens, code_calls=stream.num_code_calls,
                        elapsed_s=stream.elapsed_s, error=stream.error,
                        end_detail=stream.end_detail, confidence=stream.confidence)

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
                            stream.end in _VOTING_ENDS)

    async def _close_session(self, session: Session) -> None:
        try:
            await session.close()
        except Exception:
            log.exception("closing a sandbox session failed")

    async def _generate_loop(
        self, problem_id: str, stream: Stream, prompt: str, sessions: list[Session]
    ) -> None:
        cfg = self.config.solve
        sampling, tir = cfg.sampling, cfg.tir
        fmt = self.profile.tool_format
        engine = self.engine
        tracker = self.confidence.tracker()  # across segments: generated tokens only
        while stream.end is None:
            remaining = sampling.max_tokens - stream.tokens
            if remaining <= 0:
                stream.end = "length"
                break
            segment_start = len(stream.text)
            watcher = CodeBlockWatcher(fmt, segment_start)
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
            text, tokens = stream.text, 0
            block = None
            finish, error = "error", None
            logprobs: list[TokenLogprob] = []
            async for delta in engine.generate(request):
                if tracker is not None and delta.logprobs:
                    logprobs.extend(delta.logprobs)
                    if self._low_confidence(problem_id, stream, tracker, delta.logprobs) and (
                        delta.finish_reason is None
                    ):
                        await engine.cancel(request.request_id)
                if delta.text and block is None:
                    text += delta.text
                    tokens += delta.num_tokens
                    block = watcher.check(text, delta.text)
                    if block is not None and delta.finish_reason is None:
                        await engine.cancel(request.request_id)  # the block is all we need
                elif delta.text:
                    tokens += delta.num_tokens
                if delta.finish_reason is not None:
                    finish, error = delta.finish_reason, delta.error
            if stream.first_token_at is None and tokens:
                stream.first_token_at = self.clock()
            stream.tokens += tokens
            stream.text = text if block is None else text[: block.end]
            if tracker is not None:
                stream.confidence = tracker.summary().to_record()
            self._trace("segment", problem_id=problem_id, stream=stream.index, seed=stream.seed,
                        text=stream.text[segment_start:], tokens=tokens,
                        finish_reason="stop" if block is not None else finish,
                        **({"logprobs": logprobs_to_json(logprobs)} if logprobs else {}))
            if block is None:
                if stream.end is None:  # not cut by the controller
                    if finish in ("stop", "length"):
                        stream.end = finish  # type: ignore[assignment]
                    else:  # an engine error, or a cancel nobody asked for
                        stream.end = "error"
                        stream.error = error or f"engine ended the request: {finish}"
                break
            if stream.end is not None:
                break
            if code_limit_reached(stream.num_code_calls, tir.max_code_calls):
                stream.end = "code_limit"
                break
            stream.status = StreamStatus.EXECUTING
            if not sessions:
                sessions.append(await self.runner.open_session())  # type: ignore[union-attr]
            result = await sessions[0].run(block.code, timeout=tir.code_timeout_s)
            feedback = execution_feedback(result, tir.output_max_chars)
            stream.code_calls.append(CodeCall(block.code, result.status, feedback,
                                              result.elapsed_s))
            stream.text += format_output(feedback)
            self._trace("code", problem_id=problem_id, stream=stream.index, code=block.code,
                        status=result.status, feedback=feedback, elapsed_s=result.elapsed_s)


def _ballot(stream: Stream) -> Ballot:
    summary = None if stream.confidence is None else ConfidenceSummary.from_record(stream.confidence)
    return Ballot(stream.answer, summary)
