"""GenSelect, the step: k seeded judgment generations on the solve engine, deadline-bounded.

Called once after the ordinary vote (``maybe_genselect``). Every judgment still running when
time runs out is cancelled on the engine (its slot is freed at once); when no judgment parsed
in time, the ordinary answer stands. The decisions themselves are in ``genselect``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aimo_infer.backends.base import Engine, GenerationRequest
from aimo_infer.config import Config
from aimo_infer.solve.cutoff import CANCEL_GRACE_S  # the most a cut waits for cancelled work
from aimo_infer.solve.genselect import (
    Candidate,
    GenSelectRecord,
    Judgment,
    Solution,
    TokenOffsets,
    build_candidates,
    char_offsets,
    derived_seed,
    judge_messages,
    parse_judgment,
    tally,
    trigger,
)
from aimo_infer.solve.prompts import render_prompt
from aimo_infer.solve.stream import votes

if TYPE_CHECKING:
    from aimo_infer.solve.controller import ProblemResult

log = logging.getLogger(__name__)

PROMPT_RESERVE_TOKENS = 512  # the instructions and the problem, beside the summaries

Trace = Callable[..., None]


def token_offsets(tokenizer_path: str | None) -> TokenOffsets:
    """Offsets by the engine's own tokenizer when it has one that gives them, else by
    characters (``CHARS_PER_TOKEN`` each)."""
    if tokenizer_path is None:
        return char_offsets
    try:
        from aimo_infer.solve.prompts import _load_tokenizer

        tokenizer: Any = _load_tokenizer(tokenizer_path)
        tokenizer("x", add_special_tokens=False, return_offsets_mapping=True)
    except Exception:  # a slow tokenizer (no offsets) or none loadable: approximate
        log.debug("no token offsets from %s; summaries measured in characters", tokenizer_path)
        return char_offsets

    def offsets(text: str) -> list[tuple[int, int]]:
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return [tuple(span) for span in enc["offset_mapping"]]

    return offsets


def summary_budget(config: Config, context_length: int, num_candidates: int) -> int:
    """Tokens per summary: the configured number, less when the prompt and the judgment would
    not fit the engine's context otherwise (never under 64)."""
    gs = config.genselect
    room = context_length - gs.max_tokens - PROMPT_RESERVE_TOKENS
    return max(64, min(gs.summary_tokens, room // max(1, num_candidates)))


async def maybe_genselect(engine: Engine, config: Config, result: ProblemResult, problem: str,
                          deadline: float | None, clock: Callable[[], float],
                          trace: Trace) -> ProblemResult:
    """``result`` with GenSelect's choice and record when it is switched on (unchanged when
    it is off); it runs only on a split vote with enough time left, else records why not."""
    gs = config.genselect
    if not gs.enabled:
        return result
    started = clock()
    time_left = None if deadline is None else deadline - started
    run, reason = trigger(result.vote, time_left, gs)
    record = GenSelectRecord(False, reason, result.answer, result.answer)
    if run:
        try:
            record = await _genselect(engine, config, result, problem, deadline, clock, trace,
                                      reason)
        except Exception as exc:  # GenSelect never costs the problem its ordinary answer
            log.exception("GenSelect failed on %s; the ordinary answer stands", result.problem_id)
            record = GenSelectRecord(True, f"failed: {type(exc).__name__}: {exc}",
                                     result.answer, result.answer)
    record.elapsed_s = clock() - started
    trace("genselect_end", problem_id=result.problem_id, **record.to_record())
    return dataclasses.replace(result, answer=record.chosen, genselect=record,
                               elapsed_s=result.elapsed_s + record.elapsed_s)


async def _genselect(engine: Engine, config: Config, result: ProblemResult, problem: str,
                     deadline: float | None, clock: Callable[[], float], trace: Trace,
                     reason: str) -> GenSelectRecord:
    gs, run_seed = config.genselect, config.solve.run_seed
    pid = result.problem_id
    solutions = [Solution(s.index, s.answer, s.text, s.tokens) for s in result.streams
                 if votes(s.end) and s.answer is not None]
    shuffle_seed = derived_seed(run_seed, pid, "genselect-shuffle")
    info = engine.info
    per_answer = Counter(s.answer for s in solutions)
    n = min(gs.max_candidates, sum(min(c, gs.per_answer) for c in per_answer.values()))
    candidates = build_candidates(solutions, result.vote, gs, shuffle_seed,
                                  summary_budget(config, info.context_length, n),
                                  token_offsets(info.tokenizer_path))
    shown = [{"stream": c.stream, "answer": c.answer, "summary_chars": len(c.summary)}
             for c in candidates]
    prompt = render_prompt(judge_messages(problem, candidates), info.tokenizer_path)
    trace("genselect_start", problem_id=pid, reason=reason, ordinary=result.answer,
          shuffle_seed=shuffle_seed, candidates=shown, prompt=prompt)
    stop_at = clock() + gs.max_s
    if deadline is not None:
        stop_at = min(stop_at, deadline)
    seeds = [derived_seed(run_seed, pid, "genselect", j) for j in range(gs.k)]
    judgments = await run_judgments(engine, config, pid, prompt, seeds, candidates, stop_at,
                                    clock, trace)
    chosen = tally([j.answer for j in judgments], result.vote, result.answer)
    return GenSelectRecord(True, reason, result.answer, chosen, shuffle_seed, shown, judgments)


async def run_judgments(engine: Engine, config: Config, problem_id: str, prompt: str,
                        seeds: list[int], candidates: list[Candidate], stop_at: float,
                        clock: Callable[[], float], trace: Trace) -> list[Judgment]:
    """One judgment per seed, concurrently, until all end or ``stop_at`` (a ``clock()``
    time); those still running then are cancelled on the engine and count as no judgment."""
    sampling = config.solve.sampling
    requests = [GenerationRequest(
        request_id=f"{problem_id}/genselect/{j}", prompt=prompt, seed=seed,
        temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
        min_p=sampling.min_p, max_tokens=config.genselect.max_tokens,
    ) for j, seed in enumerate(seeds)]
    texts = ["" for _ in requests]
    ends: list[list[Any]] = [["running", 0] for _ in requests]  # finish, tokens

    async def generate(j: int) -> None:
        try:
            async for delta in engine.generate(requests[j]):
                texts[j] += delta.text
                ends[j][1] += delta.num_tokens
                if delta.finish_reason is not None:
                    ends[j][0] = delta.finish_reason
        except asyncio.CancelledError:
            ends[j][0] = "cancelled"
        except Exception as exc:  # a failed judgment is no judgment, not a failed problem
            log.warning("judgment %d of %s failed: %s", j, problem_id, exc)
            ends[j][0] = "error"

    tasks = {asyncio.create_task(generate(j)): j for j in range(len(requests))}
    try:
        _, late = await asyncio.wait(tasks, timeout=max(0.0, stop_at - clock()))
    except asyncio.CancelledError:  # the caller gave up (a watchdog): free the engine first
        for task, j in tasks.items():
            if not task.done():
                await asyncio.shield(engine.cancel(requests[j].request_id))
                task.cancel()
        raise
    if late:
        for task in late:
            await engine.cancel(requests[tasks[task]].request_id)
        _, stuck = await asyncio.wait(late, timeout=CANCEL_GRACE_S)
        for task in stuck:  # an engine that ignored cancel: close its stream from our side
            task.cancel()
        if stuck:
            await asyncio.wait(stuck)
    cut = {tasks[t] for t in late}
    judgments = []
    for j, request in enumerate(requests):
        finish = "deadline" if j in cut else ends[j][0]
        index = None if finish == "deadline" else parse_judgment(texts[j], len(candidates))
        answer = None if index is None else candidates[index].answer
        judgments.append(Judgment(request.seed, index, answer, finish, ends[j][1]))
        trace("genselect_judgment", problem_id=problem_id, judgment=j, seed=request.seed,
              text=texts[j], index=index, answer=answer, finish=finish, tokens=ends[j][1])
    return judgments
