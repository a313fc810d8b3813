"""The never-failing ``predict`` behind a Kaggle inference server.

On Kaggle one exception from ``predict`` fails the whole submission and a run past its hours
scores nothing. ``Predictor.predict`` therefore always returns one row (the served id, a valid
integer) before its allotted deadline, whatever the engine or the sandbox does: the solve runs
on an event loop in a background thread (``loop_thread``) behind a hard watchdog, every
failure is logged and answered with the fallback, and a dead or hung engine (and its sandbox)
is restarted so the next problems work.

Fallback answer: 0 by default (``submission.fallback_answer``). Any fixed guess scores about
1/1000 (AIMO-2) or 1/100000 (AIMO-3), and no public statistic of AIMO answers gives a better
prior; 0 is valid in both profiles, is what Kaggle's sample submissions hold, and, being
fixed, gives the same row in both private reruns (a random guess would split them).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import weakref
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import polars as pl

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine
from aimo_infer.config import Config, ConfigError, EngineConfig, TIRConfig
from aimo_infer.kaggle.budget import Allotment, TimeBudget, wind_down
from aimo_infer.loop_thread import LoopThread, run_in_daemon_thread
from aimo_infer.runtime import build_controller, make_runner
from aimo_infer.solve.controller import Controller, ProblemResult
from aimo_infer.solve.faults import raised_by_harness
from aimo_infer.solve.ranges import ANSWER_LIMITS, in_range, to_profile
from aimo_infer.traces import TraceWriter
from sandbox.api import CodeRunner

log = logging.getLogger(__name__)

LOAD_MODES = ("eager", "background", "first_call")
PING_TIMEOUT_S = 1.0  # a free event loop runs a no-op in microseconds
MAX_ANSWER_CHARS = 40  # longer strings are not an integer answer (and int() on them is slow)

T = TypeVar("T")


def submission_answer(answer: object, profile: str, fallback: int) -> int:
    """A valid integer for ``profile`` from what the vote produced; ``fallback`` when none.

    aimo2 reduces mod 1000 (as its answer extraction does); aimo3 keeps 0-99999 and rejects the
    rest, since a modulo there is only right when the problem states one.
    """
    value: int | None = None
    if isinstance(answer, bool):
        value = None
    elif isinstance(answer, int):
        value = answer
    elif isinstance(answer, float) and answer.is_integer():
        value = int(answer)
    elif isinstance(answer, str) and len(answer.strip()) <= MAX_ANSWER_CHARS:
        try:
            value = int(answer.strip())
        except ValueError:
            value = None
    valid = None if value is None else to_profile(value, profile)
    return fallback if valid is None else valid


def first_value(value: object) -> object:
    """The scalar a gateway sent: the first element of a polars/pandas Series or a sequence."""
    if isinstance(value, pl.Series):
        return value[0] if len(value) else None
    if hasattr(value, "iloc"):  # a pandas Series
        return value.iloc[0] if len(value) else None  # type: ignore[arg-type,attr-defined]
    if isinstance(value, (list, tuple)):
        return value[0] if value else None
    return value


def answer_row(id_: object, answer: int) -> pl.DataFrame:
    """One row: the id as served (a Series keeps its dtype) and the answer as Int64."""
    answers = pl.Series("answer", [answer], dtype=pl.Int64)
    try:
        if isinstance(id_, pl.Series) and len(id_) >= 1:
            ids = id_.head(1).alias("id")
        else:
            ids = pl.Series("id", [first_value(id_)])
        return pl.DataFrame([ids, answers])
    except Exception:  # an id polars cannot hold: its text still identifies the row
        return pl.DataFrame([pl.Series("id", [str(id_)]), answers])


def engine_failed(result: ProblemResult) -> bool:
    """Every stream ended in an error, at least one not a harness bug: the engine or the
    sandbox is broken, not the problem (a bug in the harness is not fixed by a reload)."""
    errors = [s for s in result.streams if s.end == "error"]
    return bool(errors) and len(errors) == len(result.streams) and \
        not all(s.harness_bug for s in errors)


@dataclass(frozen=True)
class CallRecord:
    """What one ``predict`` call did, for logs, traces and tests."""

    index: int
    id: object
    answer: int
    # answered | no_answer | invalid_answer | engine_error | timeout | error | not_ready |
    # bad_input | no_time
    outcome: str
    detail: str
    started_at: float
    deadline: float | None  # the allotment's end (None when no allotment was made)
    returned_at: float
    allotment: Allotment | None = None
    result: ProblemResult | None = None  # what the solve produced (None when cut or failed)

    @property
    def overrun(self) -> bool:
        return self.deadline is not None and self.returned_at > self.deadline

    @property
    def elapsed_s(self) -> float:
        return self.returned_at - self.started_at


class SerialTraceWriter(TraceWriter):
    """A trace writer the caller's thread and the event loop's thread can share."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self._lock = threading.Lock()

    def write(self, event: str, **fields: Any) -> None:
        with self._lock:
            super().write(event, **fields)


class _Outcome(Exception):
    """Ends a call early with the fallback (internal control flow, never leaves ``predict``)."""

    def __init__(self, outcome: str, detail: str) -> None:
        super().__init__(detail)
        self.outcome = outcome
        self.detail = detail


class Predictor:
    """Owns the event loop thread, the engine, the sandbox, the time budget and the trace.

    ``predict(id_, problem, answer=None)`` is the function to serve; calls are sequential.
    """

    def __init__(
        self,
        config: Config,
        *,
        engine_factory: Callable[[EngineConfig], Engine] = create_engine,
        runner_factory: Callable[[TIRConfig], CodeRunner] | None = None,
        tracer: TraceWriter | None = None,
        num_problems: int | None = None,
        elapsed_before_s: float = 0.0,
        ping_timeout_s: float = PING_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        row_profile: str | None = None,
    ) -> None:
        """``clock`` times the budget, the watchdog and the solve (a dry run pauses it between
        problems); ``row_profile`` is the answer range of the rows (default: solve.profile; a
        dry run over free-form answers reads the raw vote from ``CallRecord.result``)."""
        sub = config.submission
        profile = config.solve.profile if row_profile is None else row_profile
        if profile not in ANSWER_LIMITS:
            raise ConfigError(f"solve.profile must be aimo2 or aimo3 for a submission, "
                              f"got {profile!r}")
        if not in_range(sub.fallback_answer, profile):
            raise ConfigError(f"submission.fallback_answer {sub.fallback_answer} is not a "
                              f"valid {profile} answer")
        if sub.load not in LOAD_MODES:
            raise ConfigError(f"submission.load must be one of {LOAD_MODES}, got {sub.load!r}")
        self.config = config
        self.fallback = sub.fallback_answer
        self.clock = clock
        self._row_profile = profile
        self._result: ProblemResult | None = None
        self._engine_factory = engine_factory
        self._runner_factory = runner_factory
        self._own_tracer = tracer is None and sub.trace is not None
        self.tracer = SerialTraceWriter(sub.trace) if self._own_tracer else tracer  # type: ignore[arg-type]
        self.budget = TimeBudget(config.budget, clock(), num_problems, elapsed_before_s)
        self.calls: list[CallRecord] = []
        self.restarts = 0
        self.ever_ready = False  # an engine was loaded and handed to a call (or eagerly)
        self.ping_timeout_s = ping_timeout_s
        self._lock = threading.Lock()
        self._worker: LoopThread | None = None
        self._ready: concurrent.futures.Future[Controller] | None = None
        self._controller: Controller | None = None  # the one the last call solved with
        self._loop_suspect = False
        # Controllers whose engine and sandbox are shut, by object: an id() is reused once freed.
        self._closed: weakref.WeakSet[Controller] = weakref.WeakSet()

    # ----- life cycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Begin loading as ``submission.load`` says.

        ``eager`` builds the engine in the calling thread (some engines want the main thread)
        and raises on failure; ``background`` starts the load and returns at once;
        ``first_call`` leaves it to the first ``predict``.
        """
        mode = self.config.submission.load
        if mode == "first_call":
            return
        if mode == "background":
            self._ensure_loading()
            return
        engine = self._engine_factory(self.config.engine)
        self._ensure_loop()
        self._ready = self._submit(self._load(engine))
        self._ready.result(timeout=self.config.submission.load_timeout_s)
        self.ever_ready = True

    def close(self) -> None:
        """Shut the engine and sandbox down, stop the loop thread, close the trace."""
        timeout = self.config.submission.restart_timeout_s
        worker = self._worker
        held = [c for c in (_loaded(self._ready), self._controller) if c is not None]
        if self._ready is not None and not self._ready.done():
            self._ready.cancel()  # a load still under way is abandoned
        if worker is not None:
            for controller in dict.fromkeys(held):
                try:
                    worker.submit(self._close(controller)).result(timeout=timeout)
                except BaseException as exc:
                    log.warning("closing the engine did not finish: %s", type(exc).__name__)
            worker.stop(timeout)
        self._worker = self._ready = self._controller = None
        if self._own_tracer and self.tracer is not None:
            self.tracer.close()

    def __enter__(self) -> Predictor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----- the served function ----------------------------------------------------------------

    def predict(self, id_: object, problem: object, answer: object = None) -> pl.DataFrame:
        """One row ``{"id": id_, "answer": int}``; never raises, returns before its deadline.

        ``answer`` (sent by a gateway that has a reference file) is ignored.
        """
        with self._lock:
            started = self.clock()
            allotment: Allotment | None = None
            self._result = None
            try:
                allotment = self._allot(started)
                value, outcome, detail = self._answer(id_, problem, allotment)
            except KeyboardInterrupt:
                raise
            except _Outcome as stop:
                value, outcome, detail = self.fallback, stop.outcome, stop.detail
            except BaseException as exc:  # the last line of defence: never out of predict
                value, outcome, detail = self.fallback, "error", f"{type(exc).__name__}: {exc}"
                log.exception("predict failed")
            try:
                row = answer_row(id_, value)
            except BaseException:  # an id whose very text fails: still one valid row
                row = pl.DataFrame({"id": [None], "answer": [value]},
                                   schema={"id": pl.String, "answer": pl.Int64})
            self._record(id_, value, outcome, detail, started, allotment)
            return row

    __call__ = predict

    def _allot(self, started: float) -> Allotment:
        """The first call may wait for the engine (no deadline there), then takes its allotment."""
        first = not self.calls
        ready = self._ensure_loading()
        if first and not ready.done():
            cap = self.budget.time_left(started) - self.budget.reserved_s(after_this=False)
            wait = max(0.0, min(self.config.submission.load_timeout_s, cap))
            concurrent.futures.wait([ready], timeout=wait)
        return self.budget.allot(self.clock())

    def _answer(self, id_: object, problem: object, allotment: Allotment) -> tuple[int, str, str]:
        sub = self.config.submission
        # The one wind-down rule (the dry run uses it too): margins shrink with short allotments.
        window = wind_down(allotment.seconds, sub.wind_down_s, sub.return_margin_s)
        begun = allotment.deadline - allotment.seconds
        hard, solve_deadline = begun + window.answer_s, begun + window.solve_s
        text = first_value(problem)
        if not isinstance(text, str) or not text.strip():
            raise _Outcome("bad_input", f"problem is not text: {type(text).__name__}")
        problem_id = str(first_value(id_))
        if allotment.seconds <= sub.return_margin_s or hard <= self.clock():
            raise _Outcome("no_time", "the time budget is spent")  # too little to do anything
        self._check_loop(hard)
        controller = self._wait_ready(hard)
        solving = self._submit(controller.solve(problem_id, text, solve_deadline), service=False)
        try:
            result = solving.result(timeout=max(0.0, hard - self.clock()))
        except concurrent.futures.TimeoutError:
            solving.cancel()
            self._loop_suspect = True
            self._recover(controller)
            raise _Outcome("timeout", "watchdog: no result before the deadline") from None
        except BaseException as exc:
            if raised_by_harness(exc):  # a bug: report it, keep the engine (a reload won't help)
                log.error("a bug in the harness; the engine is kept", exc_info=exc)
            else:
                self._restart(controller, f"{type(exc).__name__}: {exc}")
            raise _Outcome("error", f"{type(exc).__name__}: {exc}") from exc
        if result.abandoned:  # streams that would not end: drain the engine or reload it
            self._recover(controller)
        failed = engine_failed(result)
        if failed:
            errors = sorted({s.error or "?" for s in result.streams})
            self._restart(controller, f"every stream failed: {errors[:3]}")
        self._result = result
        valid = submission_answer(result.answer, self._row_profile, -1)
        bug = bool(result.streams) and all(s.harness_bug for s in result.streams)
        outcome = "answered" if valid >= 0 else "engine_error" if failed else "error" if bug \
            else "no_answer" if result.answer is None else "invalid_answer"
        detail = f"votes={[list(c) for c in result.vote.counts][:5]} stop={result.stop_reason}"
        return (valid if valid >= 0 else self.fallback), outcome, detail

    # ----- engine, sandbox and loop ----------------------------------------------------------

    def _submit(self, coro: Coroutine[Any, Any, T], service: bool = True) \
            -> concurrent.futures.Future[T]:
        assert self._worker is not None
        return self._worker.submit(coro, service)

    def _ensure_loop(self) -> None:
        if self._worker is None or not self._worker.alive:
            self._worker, self._ready = LoopThread(), None

    def _ensure_loading(self) -> concurrent.futures.Future[Controller]:
        """The future of a ready controller; starts a load when none is under way."""
        self._ensure_loop()
        if self._ready is None or (self._ready.done() and _loaded(self._ready) is None):
            if self._ready is not None:
                log.warning("engine load failed before; loading again")
            self._ready = self._submit(self._load())
        return self._ready

    def _wait_ready(self, hard: float) -> Controller:
        """The loaded controller; a load that fails while we wait is retried once."""
        for attempt in range(2):
            ready = self._ensure_loading()
            try:
                self._controller = ready.result(timeout=max(0.0, hard - self.clock()))
                self.ever_ready = True
                return self._controller
            except concurrent.futures.TimeoutError:
                raise _Outcome("not_ready", "the engine is still loading") from None
            except BaseException as exc:
                detail = f"engine load failed: {type(exc).__name__}: {exc}"
                if attempt == 1:
                    raise _Outcome("not_ready", detail) from exc
                log.warning("%s; trying again", detail)
        raise AssertionError("unreachable")

    async def _load(self, engine: Engine | None = None) -> Controller:
        """Build engine (unless given), sandbox and controller; blocking parts off the loop."""
        if engine is None:
            engine = await run_in_daemon_thread(self._engine_factory, self.config.engine)
        try:
            return await build_controller(self.config, engine, self.tracer,
                                          self._runner_factory or make_runner, self.clock)
        except BaseException:
            await self._close_parts(engine, None)
            raise

    async def _reload(self, worker: LoopThread, old: Controller) -> Controller:
        """Cancel what the old solve left running, close its engine and sandbox, load anew."""
        await worker.cancel_leftovers(self.config.submission.restart_timeout_s)
        await self._close(old)
        return await self._load()

    async def _drain_or_reload(self, worker: LoopThread, controller: Controller) -> Controller:
        """After a watchdog cut: keep the engine if its requests drain, else replace it.

        A slow wind-down (a long decode step, a busy machine) is not a broken engine, and a
        GPU engine takes minutes to load again.
        """
        timeout = self.config.submission.restart_timeout_s
        drained = await worker.cancel_leftovers(timeout)
        if drained and await _engine_idle(controller.engine, timeout):
            log.warning("the cut-off solve drained; keeping the engine")
            return controller
        self.restarts += 1
        self._trace("restart", reason="the engine did not drain after a watchdog cut")
        log.warning("restarting engine and sandbox: they did not drain after a watchdog cut")
        await self._close(controller)
        return await self._load()

    async def _close(self, controller: Controller) -> None:
        if controller in self._closed:
            return
        self._closed.add(controller)
        await self._close_parts(controller.engine, controller.runner)

    async def _close_parts(self, engine: Engine | None, runner: CodeRunner | None) -> None:
        timeout = self.config.submission.restart_timeout_s
        for name, part in (("sandbox", runner), ("engine", engine)):
            if part is None:
                continue
            # A task of its own: a close, once begun, finishes even if our caller is cancelled.
            closing = asyncio.ensure_future(
                part.close() if name == "sandbox" else part.shutdown())  # type: ignore[union-attr]
            done, _ = await asyncio.wait({closing}, timeout=timeout)
            if not done:
                log.warning("closing the %s took over %.0fs; left running", name, timeout)
            elif closing.exception() is not None:
                exc = closing.exception()
                log.warning("closing the %s failed: %s: %s", name, type(exc).__name__, exc)

    def _recover(self, controller: Controller) -> None:
        """After a watchdog cut: drain the engine in the background (reload if it will not)."""
        assert self._worker is not None
        self._ready = self._submit(self._drain_or_reload(self._worker, controller))

    def _restart(self, controller: Controller, reason: str) -> None:
        """Replace engine and sandbox in the background; the next call waits for them."""
        log.warning("restarting engine and sandbox: %s", reason)
        self.restarts += 1
        self._trace("restart", reason=reason)
        assert self._worker is not None
        self._ready = self._submit(self._reload(self._worker, controller))

    def _check_loop(self, hard: float) -> None:
        """After a watchdog timeout, make sure the loop still runs; replace it when blocked."""
        if not self._loop_suspect or self._worker is None:
            return
        timeout = max(0.0, min(self.ping_timeout_s, hard - self.clock()))
        if self._worker.responsive(timeout):
            self._loop_suspect = False
            return
        if timeout < self.ping_timeout_s:  # cut short by the deadline: decide next call
            raise _Outcome("not_ready", "no time left to check the event loop")
        log.error("the event loop is blocked (an engine call never returned); replacing it")
        self._trace("restart", reason="event loop blocked")
        if self._ready is not None:
            self._ready.cancel()  # a reload queued on the blocked loop must not run there
        held = self._controller
        self._worker.stop_when_free(self._close(held) if held is not None else asyncio.sleep(0))
        self._worker = self._ready = self._controller = None
        self._loop_suspect = False
        self.restarts += 1
        self._ensure_loading()

    # ----- records -----------------------------------------------------------------------------

    def _trace(self, event: str, **fields: object) -> None:
        if self.tracer is None:
            return
        try:
            self.tracer.write(event, **fields)
        except Exception:
            log.warning("trace write failed", exc_info=True)

    def _record(self, id_: object, value: int, outcome: str, detail: str, started: float,
                allotment: Allotment | None) -> None:
        """Log, trace and settle the budget; never raises."""
        try:
            now = self.clock()
            if allotment is not None:
                self.budget.settle(allotment, max(0.0, now - started))
            record = CallRecord(len(self.calls), first_value(id_), value, outcome, detail,
                                started, None if allotment is None else allotment.deadline, now,
                                allotment, self._result)
            self.calls.append(record)
            level = logging.INFO if outcome == "answered" else logging.WARNING
            log.log(level, "problem %s -> %d (%s, %.1fs) %s", record.id, value, outcome,
                    record.elapsed_s, detail)
            self._trace("predict", problem_id=str(record.id), answer=value, outcome=outcome,
                        detail=detail, elapsed_s=record.elapsed_s,
                        seconds=None if allotment is None else allotment.seconds,
                        bank_s=self.budget.bank_s)
        except Exception:
            log.warning("recording a call failed", exc_info=True)


def _loaded(ready: concurrent.futures.Future[Controller] | None) -> Controller | None:
    """The controller a finished load produced; None while loading, or after a failure."""
    if ready is None or not ready.done() or ready.cancelled() or ready.exception() is not None:
        return None
    return ready.result()


async def _engine_idle(engine: Engine, timeout: float) -> bool:
    """Whether the engine lets go of every request within ``timeout`` (polled)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        try:
            if engine.num_running() == 0:
                return True
        except Exception:
            return False
        if loop.time() >= end:
            return False
        await asyncio.sleep(min(0.05, timeout / 20))

