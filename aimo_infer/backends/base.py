"""The engine protocol: what the solve loop needs from any inference engine.

Adapters (llama.cpp, transformers, vLLM, TensorRT-LLM, OpenAI-compatible HTTP, replay) implement
this protocol; the harness never imports an engine package directly.

Stop-string contract (decided once, for every engine): when a request stops on one of its stop
strings, the text streamed for that request ENDS WITH the matched stop string (adapters append it
when their engine strips it) and the finish reason is ``"stop"``. The harness also matches stop
text itself, because engines tokenise stop strings and can miss them.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from aimo_infer.errors import UserError

T = TypeVar("T")

FinishReason = Literal["stop", "length", "cancelled", "error"]
FINISH_REASONS: tuple[FinishReason, ...] = ("stop", "length", "cancelled", "error")


def find_stop(text: str, stops: tuple[str, ...], start: int = 0) -> int:
    """The protocol's stop-string rule: the index just past the earliest stop string at or after
    ``start``, or -1 when there is none."""
    best = -1
    for stop in stops:
        at = text.find(stop, start)
        if at >= 0 and (best < 0 or at + len(stop) < best):
            best = at + len(stop)
    return best


class EngineError(UserError, RuntimeError):
    """An engine failed in a way the caller should report (not a bug in the harness)."""


class EngineOptionError(EngineError, ValueError):
    """An engine option (``engine.options``) has an unknown key or a bad value."""


def parse_engine_options(cls: type[T], options: dict[str, Any], engine: str,
                         checks: Callable[[T], list[tuple[bool, str]]] | None = None) -> T:
    """Options dataclass ``cls`` from ``engine.options``: unknown keys and wrong types by
    ``config.dataclass_from_table`` (one rule for every table), then ``checks`` (range and
    choice rules, each ``(ok, what is wrong)``); the first failure raises
    ``EngineOptionError``."""
    from aimo_infer.config import dataclass_from_table

    parsed: T = dataclass_from_table(cls, options, f"engine {engine!r} options",
                                     EngineOptionError)
    for ok, message in checks(parsed) if checks is not None else []:
        if not ok:
            raise EngineOptionError(f"engine {engine!r} options: {message}")
    return parsed


class EngineUnavailable(EngineError):
    """The engine cannot start here: a missing extra, model file or device. The message says which."""


@dataclass(frozen=True)
class GenerationRequest:
    """One generation: a prompt (text or token ids), sampling settings and limits."""

    request_id: str
    prompt: str | None = None
    prompt_token_ids: tuple[int, ...] | None = None
    seed: int = 0
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0  # 0 disables top-k
    min_p: float = 0.0
    stop: tuple[str, ...] = ()
    max_tokens: int = 4096
    # Token-in/token-out (engines whose EngineInfo.token_io is True): stop on these token ids
    # too; the token that stopped the request is the last of the streamed token_ids.
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int = 0  # top-k alternatives per generated token (0: no logprobs, the default)

    def __post_init__(self) -> None:
        if (self.prompt is None) == (self.prompt_token_ids is None):
            raise ValueError("a GenerationRequest needs exactly one of prompt or prompt_token_ids")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if self.logprobs < 0:
            raise ValueError(f"logprobs must be >= 0, got {self.logprobs}")


Token = int | str
"""A token id; engines that name tokens by text only (OpenAI-compatible servers) give the text."""


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its log-probability and the top-k alternatives, most probable first.

    Log-probabilities are the model's own distribution (log-softmax of the logits, before
    temperature and truncation), as vLLM reports by default; the chosen token may be outside
    the top k.
    """

    token: Token
    logprob: float
    top: tuple[tuple[Token, float], ...] = ()


@dataclass(frozen=True)
class StreamDelta:
    """New text from one request. The last delta of a request carries its finish reason."""

    text: str
    num_tokens: int
    finish_reason: FinishReason | None = None
    error: str | None = None  # set with finish_reason == "error"
    token_ids: tuple[int, ...] = ()  # the generated token ids of this delta (token_io engines)
    # With GenerationRequest.logprobs > 0: one entry per generated token of this delta.
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class EngineInfo:
    """What the harness and reports need to know about an engine."""

    name: str
    model: str
    context_length: int
    tokenizer_path: str | None = None  # HF tokenizer directory for chat templates, if any
    deterministic: bool = True  # same seed and prompt give the same text
    extra: dict[str, object] = field(default_factory=dict)
    # Takes prompt_token_ids and stop_token_ids and streams each delta's token_ids; the Harmony
    # profile needs it (re-tokenizing text drifts from what the model generated).
    token_io: bool = False


class Engine(abc.ABC):
    """An async, in-flight-batching text generator.

    ``generate`` yields deltas until the request finishes; ``cancel`` ends one request at once
    (its stream then yields a final delta with finish reason ``"cancelled"``) without touching
    the others. ``num_running`` counts requests the engine still holds, for tests and reports.
    """

    @property
    @abc.abstractmethod
    def info(self) -> EngineInfo: ...

    @abc.abstractmethod
    def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]: ...

    @abc.abstractmethod
    async def cancel(self, request_id: str) -> None: ...

    @abc.abstractmethod
    def num_running(self) -> int: ...

    @abc.abstractmethod
    async def shutdown(self) -> None: ...

    async def __aenter__(self) -> Engine:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()


def logprobs_to_json(entries: tuple[TokenLogprob, ...] | list[TokenLogprob]) -> list[object]:
    """Logprobs in the compact JSON form traces record: ``[token, logprob, [[alt, lp], ...]]``,
    values rounded to 5 decimals (the chosen token and its alternative round alike)."""
    return [
        [e.token, round(e.logprob, 5), [[t, round(lp, 5)] for t, lp in e.top]] for e in entries
    ]


def logprobs_from_json(data: object) -> tuple[TokenLogprob, ...]:
    """The inverse of ``logprobs_to_json``; a malformed record raises ValueError."""
    if not isinstance(data, list):
        raise ValueError("recorded logprobs must be a list")
    entries = []
    for item in data:
        try:
            token, logprob, top = item
            alternatives = tuple((t, float(lp)) for t, lp in top)
            entries.append(TokenLogprob(token, float(logprob), alternatives))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad recorded logprob entry {item!r}") from exc
    return tuple(entries)
