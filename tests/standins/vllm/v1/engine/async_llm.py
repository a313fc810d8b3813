"""STAND-IN for ``vllm.v1.engine.async_llm`` (tests only): ``AsyncLLM`` over a fake model.

Behaviour kept from the real class: ``generate`` is an async generator of ``RequestOutput``;
closing or cancelling it aborts the request; ``abort`` ends the stream with a final output whose
finish reason is "abort"; stop strings are matched by the engine in decoded text (held back
when they are not to be included); generation ends at ``max_tokens`` or ``max_model_len``
("length") or the end token ("stop"); a token of ``stop_token_ids`` ends it with "stop",
``stop_reason`` = that id and the id kept as the last of ``token_ids`` (vllm/v1/core/sched/
utils.py ``check_stop``); a prompt as long as ``max_model_len`` is rejected.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from standin_core import EOS_ID, PieceTokenizer, reply_ids
from vllm.engine.arg_utils import AsyncEngineArgs
from vllm.logprobs import standin_logprobs
from vllm.outputs import CompletionOutput, RequestOutput
from vllm.sampling_params import RequestOutputKind, SamplingParams


class EngineDeadError(RuntimeError):
    pass


# Some fields of vLLM's SpeculativeConfig (``vllm/config/speculative.py``), a pydantic dataclass
# that ``EngineArgs.create_engine_config`` builds from the ``speculative_config`` dict: other
# keys are rejected. The n-gram window is ``prompt_lookup_max``/``prompt_lookup_min``.
SPECULATIVE_FIELDS = frozenset({
    "method", "model", "num_speculative_tokens", "draft_tensor_parallel_size", "quantization",
    "max_model_len", "revision", "code_revision", "prompt_lookup_max", "prompt_lookup_min",
    "speculative_token_tree", "parallel_drafting", "enforce_eager", "disable_padded_drafter_batch",
})


@dataclass
class _Request:
    queue: asyncio.Queue[RequestOutput] = field(default_factory=asyncio.Queue)
    task: asyncio.Task[None] | None = None


class AsyncLLM:
    def __init__(self, engine_args: AsyncEngineArgs, max_model_len: int) -> None:
        self.engine_args = engine_args
        self.model_config = SimpleNamespace(model=engine_args.model, max_model_len=max_model_len)
        self._tokenizer = PieceTokenizer(engine_args.tokenizer or engine_args.model)
        self._states: dict[str, _Request] = {}
        self._dead = False
        self.submitted: list[tuple[str, list[int], SamplingParams]] = []  # stand-in only
        self.shutdown_calls = 0  # stand-in only
        self.shutdown_timeouts: list[float | None] = []  # stand-in only

    @classmethod
    def from_engine_args(
        cls,
        engine_args: AsyncEngineArgs,
        start_engine_loop: bool = True,
        usage_context: Any = None,
        stat_loggers: Any = None,
    ) -> AsyncLLM:
        if not isinstance(engine_args, AsyncEngineArgs):
            raise TypeError("engine_args must be AsyncEngineArgs")
        spec = engine_args.speculative_config or {}
        unknown = sorted(set(spec) - SPECULATIVE_FIELDS)
        if unknown:
            raise TypeError(f"SpeculativeConfig.__init__() got an unexpected keyword argument "
                            f"{unknown[0]!r}")
        config = Path(engine_args.model) / "config.json"
        if not config.is_file():
            raise OSError(f"stand-in: {engine_args.model} has no config.json")
        limit = json.loads(config.read_text()).get("max_position_embeddings", 2048)
        return cls(engine_args, engine_args.max_model_len or limit)

    @property
    def errored(self) -> bool:
        return self._dead

    def get_tokenizer(self) -> PieceTokenizer:
        return self._tokenizer

    def standin_active(self) -> int:
        """Requests the engine still holds (stand-in only)."""
        return len(self._states)

    def standin_holds(self, request_id: str) -> bool:
        """Whether the engine still holds this request (stand-in only)."""
        return request_id in self._states

    async def generate(
        self,
        prompt: Any,
        sampling_params: SamplingParams,
        request_id: str,
        *,
        prompt_text: str | None = None,
        lora_request: Any = None,
        tokenization_kwargs: dict[str, Any] | None = None,
        trace_headers: Any = None,
        priority: int = 0,
        data_parallel_rank: int | None = None,
        session_id: str | None = None,
        kv_hints: Any = None,
        reasoning_ended: bool | None = None,
        reasoning_parser_kwargs: dict[str, Any] | None = None,
    ) -> AsyncGenerator[RequestOutput, None]:
        if self._dead:
            raise EngineDeadError()
        if not isinstance(sampling_params, SamplingParams):
            raise TypeError("sampling_params must be SamplingParams")
        ids = self._prompt_ids(prompt)
        limit = self.model_config.max_model_len
        if len(ids) >= limit:
            raise ValueError(
                f"The decoder prompt (length {len(ids)}) is longer than the maximum model "
                f"length of {limit}."
            )
        if request_id in self._states:
            raise ValueError(f"Request id {request_id} already running.")
        state = _Request()
        self._states[request_id] = state
        self.submitted.append((request_id, ids, sampling_params))
        state.task = asyncio.create_task(self._run(request_id, ids, sampling_params, state))
        try:
            finished = False
            while not finished:
                out = await state.queue.get()
                finished = out.finished
                yield out
        except (asyncio.CancelledError, GeneratorExit):
            await self.abort(request_id)
            raise

    def _prompt_ids(self, prompt: Any) -> list[int]:
        if isinstance(prompt, str):
            return self._tokenizer.encode(prompt)
        if isinstance(prompt, dict) and "prompt_token_ids" in prompt:
            return list(prompt["prompt_token_ids"])
        if isinstance(prompt, dict) and "prompt" in prompt:
            return self._tokenizer.encode(prompt["prompt"])
        raise TypeError(f"unsupported prompt {prompt!r}")

    async def _run(
        self, rid: str, prompt_ids: list[int], params: SamplingParams, state: _Request
    ) -> None:
        stops = list(params.stop or [])
        hold = 0 if params.include_stop_str_in_output or not stops else max(map(len, stops)) - 1
        out_ids: list[int] = []
        sent = 0
        greedy = params.temperature == 0.0
        all_logprobs: list[Any] = []  # with params.logprobs: one {id: Logprob} per token
        for tok in reply_ids(self._tokenizer, prompt_ids, params.seed or 0, greedy):
            await asyncio.sleep(0)
            if self._states.get(rid) is not state:
                return
            finish = stop_reason = None
            new = [] if tok == EOS_ID else [tok]
            out_ids += new
            new_logprobs = [standin_logprobs(t, len(out_ids), params.seed or 0, greedy,
                                             params.logprobs) for t in new] if params.logprobs else []
            all_logprobs += new_logprobs
            text = self._tokenizer.decode(out_ids)
            if tok == EOS_ID:
                finish = "stop"
            elif tok in (params.stop_token_ids or []):
                finish, stop_reason = "stop", tok
            hits = [(text.find(s), s) for s in stops if s in text]
            if hits:
                at, stop_reason = min(hits)
                finish = "stop"
                keep = at + len(stop_reason) if params.include_stop_str_in_output else at
                text = text[:keep]
            if finish is None and (
                len(out_ids) >= (params.max_tokens or 1 << 30)
                or len(prompt_ids) + len(out_ids) >= self.model_config.max_model_len
            ):
                finish = "length"
            end = len(text) if finish else max(sent, len(text) - hold)
            delta = params.output_kind == RequestOutputKind.DELTA
            completion = CompletionOutput(
                index=0,
                text=text[sent:end] if delta else text[:end],
                token_ids=new if delta else list(out_ids),
                cumulative_logprob=None,
                logprobs=(new_logprobs if delta else list(all_logprobs)) if params.logprobs else None,
                finish_reason=finish,
                stop_reason=stop_reason,
            )
            sent = end
            state.queue.put_nowait(
                RequestOutput(
                    rid, None, prompt_ids, None, [completion], finished=finish is not None
                )
            )
            if finish is not None:
                self._states.pop(rid, None)
                return

    async def abort(self, request_id: str | list[str], internal: bool = False) -> None:
        for rid in [request_id] if isinstance(request_id, str) else list(request_id):
            state = self._states.pop(rid, None)
            if state is None:
                continue
            if state.task is not None:
                state.task.cancel()
            final = CompletionOutput(
                index=0,
                text="",
                token_ids=[],
                cumulative_logprob=None,
                logprobs=None,
                finish_reason="abort",
            )
            state.queue.put_nowait(RequestOutput(rid, None, None, None, [final], finished=True))

    def shutdown(self, timeout: float | None = None) -> None:
        self.shutdown_calls += 1
        self.shutdown_timeouts.append(timeout)
        for state in self._states.values():
            if state.task is not None:
                state.task.cancel()
        self._states.clear()
        self._dead = True
