"""STAND-IN for ``tensorrt_llm.executor`` (tests only): a fake in-flight-batching executor.

How each engine samples, as read in the 1.2-era sources:
- ``trt``: the runtime samples with temperature, top-k, top-p and the request seed.
- ``redrafter``: an explicit-draft-tokens engine (``cpp/tensorrt_llm/layers/
  explicitDraftTokensLayer.cpp``, ``setup``) reads only the temperature and the random seed:
  top-k, top-p and min-p are ignored; an engine converted with greedy search
  (``examples/redrafter/convert_checkpoint.py``, ``redrafter_greedy_search``, the default)
  ignores the temperature too, so every seed gives the same stream.
- ``torch``: the PyTorch backend's ``TorchSampler`` (``_torch/pyexecutor/sampler.py``, read at
  commit 28edbcdb: one ``torch.Generator`` seeded once with ``_global_seed = 42`` for every
  request) up to 1.2 ignores the per-request seed, so a seed does not reproduce its stream;
  min-p is treated as ignored too. EAGLE-3 one-model decoding is greedy unless
  ``allow_advanced_sampling`` is set (``llmapi/llm_args.py``, ``DecodingBaseConfig``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

from standin_core import EOS_ID, reply_ids
from tensorrt_llm.executor.result import CompletionOutput, GenerationResult, Response
from tensorrt_llm.sampling_params import SamplingParams

__all__ = ["CompletionOutput", "GenerationExecutor", "GenerationResult"]


class GenerationExecutor:
    """Runs each request as a task that streams responses into its result's queue."""

    # A temperature this low samples the most likely token (the fake model's greedy path).
    NEAR_GREEDY_TEMPERATURE = 0.01

    def __init__(self, tokenizer: Any, greedy_engine: bool, mode: str = "trt",
                 seeded: bool = True) -> None:
        self._tokenizer = tokenizer
        self._greedy_engine = greedy_engine
        self._mode = mode  # "trt" | "redrafter" | "torch"
        self._seeded = seeded  # False: the sampler ignores per-request seeds
        self._batch_rng = itertools.count(1000)  # one generator shared by every request
        self.submitted: list[tuple[list[int], SamplingParams]] = []  # stand-in only
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
        params._get_stop_words()  # raises when stop strings were never tokenised
        self.submitted.append((list(prompt_ids), params))
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
        greedy, seed = self._sampling(params)
        stop_ids = set(params.stop_token_ids or [])
        out: list[int] = []
        pending: list[int] = []

        def send(**final: Any) -> None:
            nonlocal pending
            if final or result._streaming:
                result.aqueue.put_nowait(Response(pending, **final))
                pending = []

        for tok in reply_ids(self._tokenizer, prompt_ids, seed, greedy):
            await asyncio.sleep(0)
            if rid in self._cancelled:
                send(is_final=True, finish_reason="cancelled")
                return
            if (tok == params.end_id or tok in stop_ids) and not params.ignore_eos:
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

    def _sampling(self, params: SamplingParams) -> tuple[bool, int]:
        """Whether this request decodes greedily, and the seed its sampler really uses."""
        seed = (params.seed or 0) if self._seeded else next(self._batch_rng)
        if self._greedy_engine:
            return True, seed
        if self._mode == "redrafter":  # temperature and seed only
            temperature = 1.0 if params.temperature is None else params.temperature
            return temperature <= self.NEAR_GREEDY_TEMPERATURE, seed
        return params.greedy or params.temperature == 0.0, seed

    def shutdown(self) -> None:
        self._shut = True
        for task in list(self._tasks.values()):
            task.cancel()
        self._tasks.clear()
