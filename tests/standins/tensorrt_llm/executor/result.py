"""STAND-IN for ``tensorrt_llm.executor.result`` (tests only): the async result object."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from tensorrt_llm.sampling_params import SamplingParams


class Logprob(NamedTuple):
    """tensorrt_llm/executor/result.py: one token's logprob and its rank (PyTorch backend top-k
    dicts are ``{token_id: Logprob}``; the engine path gives a float per token instead)."""

    logprob: float
    rank: int | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    cumulative_logprob: float | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    _last_text_len: int = field(default=0, init=False, repr=False)
    _last_token_ids_len: int = field(default=0, init=False, repr=False)

    @property
    def length(self) -> int:
        return len(self.token_ids)

    @property
    def text_diff(self) -> str:
        return self.text[self._last_text_len :]

    @property
    def token_ids_diff(self) -> list[int]:
        return self.token_ids[self._last_token_ids_len :]


@dataclass(frozen=True)
class Response:
    """What the stand-in executor sends: new tokens, and on the last one why it finished."""

    new_token_ids: list[int]
    is_final: bool = False
    finish_reason: str | None = None
    stop_reason: str | None = None
    strip_last: int = 0  # stop-word tokens to drop when the stop string is not kept


class GenerationResult:
    def __init__(
        self,
        request_id: int,
        prompt_token_ids: list[int],
        sampling_params: SamplingParams,
        executor: Any,
        tokenizer: Any,
        streaming: bool,
    ) -> None:
        self.id = request_id
        self._prompt_token_ids = prompt_token_ids
        self.sampling_params = sampling_params
        self._executor = weakref.ref(executor)
        self._tokenizer = tokenizer
        self._streaming = streaming
        self._outputs = [CompletionOutput(0)]
        self._done = False
        self._aborted = False
        try:
            asyncio.get_running_loop()
            self.aqueue: asyncio.Queue[Response] | None = asyncio.Queue()
        except RuntimeError:
            self.aqueue = None

    @property
    def request_id(self) -> int:
        return self.id

    @property
    def prompt_token_ids(self) -> list[int]:
        return self._prompt_token_ids

    @property
    def outputs(self) -> list[CompletionOutput]:
        return self._outputs[: self.sampling_params.n]

    @property
    def finished(self) -> bool:
        return self._done

    def abort(self) -> None:
        executor = self._executor()
        assert executor is not None, "The executor is not set for this result."
        executor.abort_request(self.request_id)
        self._aborted = True

    def aborted(self) -> bool:
        return self._aborted

    def _handle_response(self, response: Response) -> None:
        out = self._outputs[0]
        out._last_token_ids_len = len(out.token_ids)
        out.token_ids.extend(response.new_token_ids)
        if response.is_final:
            self._done = True
            out.finish_reason = response.finish_reason
            out.stop_reason = response.stop_reason
            if response.strip_last:
                out.token_ids = out.token_ids[: -response.strip_last]
        out._last_text_len = len(out.text)
        if self.sampling_params.detokenize:
            out.text = self._tokenizer.decode(out.token_ids)

    def __aiter__(self) -> GenerationResult:
        return self

    async def __anext__(self) -> GenerationResult:
        if self._done:
            raise StopAsyncIteration
        assert self.aqueue is not None, (
            "The asyncio event loop was not present during initialization, so async "
            "operations are not available."
        )
        self._handle_response(await self.aqueue.get())
        return self
