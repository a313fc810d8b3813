"""STAND-IN for ``tensorrt_llm.executor`` (tests only): a fake in-flight-batching executor."""

from __future__ import annotations

import asyncio
from typing import Any

from standin_core import EOS_ID, reply_ids
from tensorrt_llm.executor.result import CompletionOutput, GenerationResult, Response
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["CompletionOutput", "GenerationExecutor", "GenerationResult"]


class GenerationExecutor:
    """Runs each request as a task that streams responses into its result's queue."""

    def __init__(self, tokenizer: Any, greedy_engine: bool) -> None:
        self._tokenizer = tokenizer
        self._greedy_engine = greedy_engine
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._cancelled: set[int] = set()
        self._next_id = 1
        self._shut = False

    def is_shutdown(self) -> bool:
        return self._shut

    def active(self) -> int:
        return len(self._tasks)

    def submit(
        self, prompt_ids: list[int], params: SamplingParams, streaming: bool
    ) -> GenerationResult:
        rid = self._next_id
        self._next_id += 1
        result = GenerationResult(rid, prompt_ids, params, self, self._tokenizer, streaming)
        if result.aqueue is None:
            raise RuntimeError("stand-in: generate_async needs a running event loop")
        task = asyncio.get_running_loop().create_task(self._run(rid, result, prompt_ids, params))
        self._tasks[rid] = task
        task.add_done_callback(lambda _t: self._tasks.pop(rid, None))
        return result

    def abort_request(self, request_id: int) -> None:
        if request_id in self._tasks:
            self._cancelled.add(request_id)

    async def _run(
        self, rid: int, result: GenerationResult, prompt_ids: list[int], params: SamplingParams
    ) -> None:
        greedy = self._greedy_engine or params.greedy
        out: list[int] = []
        pending: list[int] = []

        def send(**final: Any) -> None:
            nonlocal pending
            if final or result._streaming:
                result.aqueue.put_nowait(Response(pending, **final))
                pending = []

        for tok in reply_ids(self._tokenizer, prompt_ids, params.seed or 0, greedy):
            await asyncio.sleep(0)
            if rid in self._cancelled:
                send(is_final=True, finish_reason="cancelled")
                return
            if tok == params.end_id and not params.ignore_eos:
                send(is_final=True, finish_reason="stop")
                return
            out.append(tok)
            pending.append(tok)
            for stop, ids in params._stop_word_ids or []:
                if ids and out[-len(ids) :] == ids:
                    strip = 0 if params.include_stop_str_in_output else len(ids)
                    send(is_final=True, finish_reason="stop", stop_reason=stop, strip_last=strip)
                    return
            if len(out) >= params.max_tokens:
                send(is_final=True, finish_reason="length")
                return
            send()
        assert tok == EOS_ID

    def shutdown(self) -> None:
        self._shut = True
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
