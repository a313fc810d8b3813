"""OpenAI-compatible HTTP engine: streaming ``/v1/completions`` on one or several servers.

Serves ``vllm serve``, ``trtllm-serve``, SGLang, llama-cpp-python's server and similar. What the
servers differ in is decided once per server *flavour* (detected from ``/v1/models``
``owned_by``, or set with the ``server`` option), see ``FLAVOURS``.

Stop strings (the protocol wants the text to END WITH the matched stop string):
- Servers that report which stop matched (vLLM and TensorRT-LLM ``stop_reason``, SGLang
  ``matched_stop``) get the stop strings; when the reported stop is a string of the request the
  adapter appends it (the server strips it). A ``"stop"`` finish with no string reported is an
  end-of-sequence token: nothing is appended.
- Other servers (llama-cpp-python) end on a stop string and on end-of-sequence with the same
  ``finish_reason: "stop"`` and no way to tell them apart, and strip the stop text. They never
  see the stop strings: the adapter matches them in the streamed text, cuts the text just after
  the match, and closes the stream, which makes the server abandon the request.
The text is matched on the adapter side for every flavour, so a stop string that a server
missed (stop strings are tokenised on their own) still ends the request.
Cancelling closes the HTTP stream; servers abort a request whose client went away.

Every frame is checked (``check_chunk``): a frame of an unexpected shape ends its request with
an error at once. A finish chunk is delivered when it arrives, without waiting for ``[DONE]``.
Several servers: the engine starts with those that answer ``/v1/models``; a request refused
before its first byte (HTTP 429, 502, 503, 504, a connect error or timeout) is sent to the next
server, and a server that refused or failed (5xx) is tried last for a while (a back-off, or its
longer ``Retry-After``), so that least-loaded routing does not keep choosing a server that fails
fast.

Token-in/token-out (``Flavour.token_io``, vLLM): ``prompt`` as token ids, ``stop_token_ids``
and ``return_token_ids`` go out (``token_io_fields``), each chunk's ``token_ids`` come back
(``chunk_token_ids``). Other servers refuse a token request with a one-line error.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    TokenLogprob,
    find_stop,
)
from aimo_infer.config import EngineConfig


@dataclass(frozen=True)
class Flavour:
    """How one kind of server speaks the completions protocol."""

    server_stops: bool  # reports the matched stop (stop_reason / matched_stop)
    token_id_prompts: bool  # accepts ``prompt: [ids]``
    sampling_fields: bool  # accepts top_k and min_p, always sent (its defaults differ from ours)
    usage_stream: bool  # accepts stream_options (per-chunk usage gives exact token counts)
    deterministic: bool  # one seed, one text (no batch-dependent numerics)
    extra: dict[str, Any] = field(default_factory=dict)  # fields sent with every request
    token_io: bool = False  # stop_token_ids in, return_token_ids out (vLLM >= 0.10.2)


FLAVOURS: dict[str, Flavour] = {
    "vllm": Flavour(True, True, True, True, False, token_io=True),
    "trtllm": Flavour(True, True, True, True, False),
    "sglang": Flavour(True, True, True, True, False),
    # Its defaults (top_k 40, min_p 0.05, repeat_penalty 1.1) must be overridden for plain
    # sampling. Not deterministic: a prompt that hits its KV prefix cache is evaluated in a
    # different batch shape, and the tiny change in logits changes a seeded sample sooner or later.
    "llama-cpp-python": Flavour(False, False, True, False, False, {"repeat_penalty": 1.0}),
    "generic": Flavour(False, True, False, False, False),
}
_OWNED_BY = {"vllm": "vllm", "tensorrt_llm": "trtllm", "sglang": "sglang", "me": "llama-cpp-python"}
_CONTEXT_KEYS = ("max_model_len", "context_length", "context_window", "n_ctx", "max_seq_len")
# The server (or a proxy before it) refused the request before any byte: another may take it.
RETRY_STATUSES = frozenset({429, 502, 503, 504})
RETRY_ROUNDS = 2  # passes over the servers before a refused request is an error
MAX_RETRY_WAIT_S = 5.0  # the longest Retry-After honoured between passes
BACKOFF_S = 1.0  # a refusing server without Retry-After is tried last for 1, 2, 4... s
MAX_BACKOFF_S = 30.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OpenAIOptions:
    """``engine.options`` of the openai engine."""

    base_url: str | None = None  # e.g. http://127.0.0.1:8000 (with or without /v1)
    base_urls: tuple[str, ...] = ()  # several servers of the same model
    routing: str = "least-loaded"  # or round-robin
    api_key: str | None = None  # None: $OPENAI_API_KEY if set
    timeout_s: float = 600.0  # longest wait for the next chunk of a stream
    connect_timeout_s: float = 10.0
    wait_ready_s: float = 0.0  # poll /v1/models this long for servers still starting
    server: str = "auto"  # a FLAVOURS name; auto: from /v1/models owned_by
    context_length: int | None = None  # when the server does not report it
    tokenizer_path: str | None = None  # HF tokenizer directory for chat templates
    deterministic: bool | None = None  # None: the flavour's default
    extra_body: dict[str, Any] = field(default_factory=dict)  # merged into every request

    @classmethod
    def parse(cls, options: dict[str, Any]) -> OpenAIOptions:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(f"engine 'openai': unknown option(s) {unknown}; known: {sorted(known)}")
        values = dict(options)
        if isinstance(values.get("base_urls"), str):
            values["base_urls"] = (values["base_urls"],)
        values["base_urls"] = tuple(values.get("base_urls", ()))
        opts = cls(**values)
        if not opts.urls:
            raise ValueError("engine 'openai' needs options.base_url or options.base_urls")
        if opts.routing not in ("least-loaded", "round-robin"):
            raise ValueError(f"engine 'openai': routing must be least-loaded or round-robin, got {opts.routing!r}")
        if opts.server != "auto" and opts.server not in FLAVOURS:
            raise ValueError(f"engine 'openai': server must be auto or one of {sorted(FLAVOURS)}")
        return opts

    @property
    def urls(self) -> tuple[str, ...]:
        """API roots ending in /v1, one per server."""
        raw = ([self.base_url] if self.base_url else []) + list(self.base_urls)
        return tuple(_api_root(u) for u in raw)


def _api_root(url: str) -> str:
    url = url.rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"


@dataclass
class _Endpoint:
    url: str
    in_flight: int = 0
    failures: int = 0  # refusals in a row
    down_until: float = 0.0  # monotonic time until which it is tried after the others

    def refused(self, retry_after: float | None) -> None:
        self.failures += 1
        backoff = min(MAX_BACKOFF_S, BACKOFF_S * 2 ** (self.failures - 1))
        self.down_until = time.monotonic() + max(backoff, retry_after or 0.0)

    def served(self) -> None:
        self.failures, self.down_until = 0, 0.0


class _Refused(Exception):
    """The server refused a request before its first byte (429/503): try another one."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


def retry_after_s(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given in seconds (an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if 0 <= seconds < float("inf") else None


def check_chunk(chunk: object) -> str | None:
    """Why a decoded frame is not a completion chunk of one choice, or None when it is one."""
    if not isinstance(chunk, dict):
        return f"a frame of type {type(chunk).__name__}, not an object"
    if "error" in chunk:
        return None
    choices = chunk.get("choices")
    if choices is not None and not isinstance(choices, list):
        return f"choices is a {type(choices).__name__}, not a list"
    for choice in choices or []:
        if not isinstance(choice, dict):
            return f"a choice of type {type(choice).__name__}, not an object"
        index = choice.get("index", 0)
        if type(index) is not int or index != 0:
            return f"a choice with index {index!r}; one choice (index 0) was asked for"
        for key, kind in (("text", str), ("finish_reason", str), ("token_ids", list)):
            value = choice.get(key)
            if value is not None and not isinstance(value, kind):
                return f"{key} is a {type(value).__name__}, not a {kind.__name__}"
    usage = chunk.get("usage")
    if usage is not None and not isinstance(usage, dict):
        return f"usage is a {type(usage).__name__}, not an object"
    return None


@dataclass
class _Running:
    """A request in flight: where its deltas go and the task that reads its stream."""

    queue: asyncio.Queue[StreamDelta]
    task: asyncio.Task[None] | None = None
    finished: bool = False
    logprobs: list[TokenLogprob] = field(default_factory=list)  # parsed, not yet delivered


def request_body(request: GenerationRequest, model: str, flavour: Flavour) -> dict[str, Any]:
    """The JSON body of one streaming completion request."""
    if request.prompt_token_ids is not None and not flavour.token_id_prompts:
        raise EngineError("this server does not accept token-id prompts; send text")
    if request.stop_token_ids and not flavour.token_io:
        raise EngineError("this server does not stop on token ids (stop_token_ids); use vLLM")
    body: dict[str, Any] = {
        "model": model,
        "prompt": list(request.prompt_token_ids) if request.prompt_token_ids is not None
        else request.prompt,
        "max_tokens": request.max_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "seed": request.seed,
        "stream": True,
    }
    if flavour.sampling_fields or request.top_k:
        body["top_k"] = request.top_k
    if flavour.sampling_fields or request.min_p:
        body["min_p"] = request.min_p
    stops = [s for s in request.stop if s]
    if flavour.server_stops and stops:
        body["stop"] = stops
    if flavour.usage_stream:
        body["stream_options"] = {"include_usage": True, "continuous_usage_stats": True}
    if request.logprobs > 0:
        body["logprobs"] = request.logprobs
    body.update(flavour.extra)
    body.update(token_io_fields(request, flavour))
    return body


def token_io_fields(request: GenerationRequest, flavour: Flavour) -> dict[str, Any]:
    """Token-out fields (vLLM): stop token ids, and the generated ids in every chunk."""
    if not flavour.token_io or (request.prompt_token_ids is None and not request.stop_token_ids):
        return {}
    fields: dict[str, Any] = {"return_token_ids": True, "skip_special_tokens": False}
    if request.stop_token_ids:
        fields["stop_token_ids"] = list(request.stop_token_ids)
    return fields


def chunk_token_ids(choice: dict[str, Any], finish: str | None,
                    stop_token_ids: tuple[int, ...]) -> tuple[int, ...]:
    """The generated ids of one chunk; a stop token id the server reports (vLLM's
    ``stop_reason``) but left out is appended, as the protocol wants it last."""
    raw = choice.get("token_ids")
    ids = tuple(t for t in raw if isinstance(t, int)) if isinstance(raw, list) else ()
    matched = choice.get("stop_reason")
    if (finish == "stop" and isinstance(matched, int) and not isinstance(matched, bool)
            and matched in stop_token_ids and ids[-1:] != (matched,)):
        ids += (matched,)
    return ids
def choice_logprobs(choice: dict[str, Any], k: int) -> list[TokenLogprob]:
    """The logprobs of one streamed ``/v1/completions`` choice (``logprobs.tokens``,
    ``token_logprobs``, ``top_logprobs``: vLLM, llama-cpp-python), alternatives sorted and cut
    to ``k``. Tokens are their text, or ids when the server sends ``token_id:N`` (vLLM's
    ``return_tokens_as_token_ids``). A malformed block gives nothing rather than wrong values."""
    block = choice.get("logprobs")
    if k <= 0 or not isinstance(block, dict):
        return []
    tokens, chosen = block.get("tokens"), block.get("token_logprobs")
    tops = block.get("top_logprobs") or []
    if not isinstance(tokens, list) or not isinstance(chosen, list) or len(tokens) != len(chosen):
        return []
    entries = []
    for i, (token, logprob) in enumerate(zip(tokens, chosen, strict=True)):
        top = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
        if not isinstance(token, str) or not isinstance(logprob, (int, float)):
            return []
        ranked = sorted(((_token(t), min(float(v), 0.0)) for t, v in top.items()
                         if isinstance(v, (int, float))), key=lambda tv: -tv[1])[:k]
        entries.append(TokenLogprob(_token(token), min(float(logprob), 0.0), tuple(ranked)))
    return entries


def _token(text: str) -> int | str:
    """A token as a server names it: ``token_id:N`` is the id N, anything else its text."""
    if text.startswith("token_id:") and text[9:].isdigit():
        return int(text[9:])
    return text


def stop_to_append(text: str, finish: str | None, choice: dict[str, Any], stops: tuple[str, ...]) -> str:
    """The stop string a server stripped from ``text`` and reported, else ""."""
    matched = choice.get("stop_reason", choice.get("matched_stop"))
    if finish != "stop" or not isinstance(matched, str) or matched not in stops:
        return ""
    return "" if text.endswith(matched) else matched


def finish_reason(raw: str | None) -> FinishReason | None:
    """Map a server's finish reason onto the protocol's."""
    if raw is None:
        return None
    if raw in ("stop", "eos", "stop_sequence"):
        return "stop"
    if raw in ("length", "max_tokens"):
        return "length"
    if raw in ("abort", "cancelled", "canceled"):
        return "cancelled"
    return "error"


class OpenAIEngine(Engine):
    """Streams completions from OpenAI-compatible servers (see the module docstring)."""

    def __init__(self, options: OpenAIOptions, model: str, flavour: str, context_length: int,
                 urls: tuple[str, ...] | None = None) -> None:
        self._options = options
        self._model = model
        self._flavour_name = flavour
        self._flavour = FLAVOURS[flavour]
        urls = urls or options.urls
        self._endpoints = [_Endpoint(u) for u in urls]
        self._turn = itertools.count()
        deterministic = options.deterministic
        if deterministic is None:
            deterministic = self._flavour.deterministic
        self._info = EngineInfo(
            name="openai", model=model, context_length=context_length,
            tokenizer_path=options.tokenizer_path, deterministic=deterministic,
            token_io=self._flavour.token_io,
            extra={"server": flavour, "endpoints": list(urls), "routing": options.routing},
        )
        self._running: dict[str, _Running] = {}
        self._client_obj: Any = None  # an httpx client belongs to the event loop it was made on
        self._client_loop: asyncio.AbstractEventLoop | None = None
        self._key = options.api_key or os.environ.get("OPENAI_API_KEY")

    @classmethod
    def from_config(cls, config: EngineConfig) -> OpenAIEngine:
        """Ask each server for its models; ``config.model`` picks the served model (None: first)."""
        options = OpenAIOptions.parse(dict(config.options))
        try:
            import httpx
        except ImportError as exc:
            raise EngineUnavailable("engine 'openai' needs httpx: pip install 'aimo-infer[openai]'") from exc
        key = options.api_key or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        answering: dict[str, list[dict[str, Any]]] = {}
        errors = []
        for url in options.urls:  # start with the servers that answer
            try:
                answering[url] = _fetch_models(httpx, url, headers, options)
            except EngineUnavailable as exc:
                errors.append(exc)
                log.warning("%s; starting without it", exc)
        if not answering:
            raise errors[0]
        urls = tuple(answering)
        first = answering[urls[0]]
        ids = [str(c.get("id")) for c in first]
        model = config.model or (ids[0] if ids else None)
        if model is None:
            raise EngineUnavailable(f"engine 'openai': {urls[0]} serves no model")
        card = next((c for c in first if c.get("id") == model), first[0] if first else {})
        flavour = options.server
        if flavour == "auto":
            flavour = _OWNED_BY.get(str(card.get("owned_by")), "generic")
        context = options.context_length or _context_length(card)
        if context is None:
            raise EngineUnavailable(
                f"engine 'openai': {urls[0]} does not report the context length of {model!r}; "
                "set engine.options.context_length"
            )
        return cls(options, model, flavour, context, urls)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def num_running(self) -> int:
        return len(self._running)

    def in_flight(self) -> dict[str, int]:
        """Requests in flight per server (for tests and reports)."""
        return {e.url: e.in_flight for e in self._endpoints}

    def _client(self) -> Any:
        import httpx

        loop = asyncio.get_running_loop()
        if self._client_obj is None or self._client_loop is not loop:
            timeout = httpx.Timeout(self._options.timeout_s, connect=self._options.connect_timeout_s)
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
            self._client_obj = httpx.AsyncClient(timeout=timeout, headers=headers, limits=limits)
            self._client_loop = loop
        return self._client_obj

    def _pick(self) -> list[_Endpoint]:
        """Servers to try, in order: the chosen one first, the others as fallbacks; a server
        that refused recently comes after the others, however few requests it holds."""
        turn = next(self._turn) % len(self._endpoints)
        order = self._endpoints[turn:] + self._endpoints[:turn]
        now = time.monotonic()
        least = self._options.routing == "least-loaded"
        order.sort(key=lambda e: (e.down_until > now, e.in_flight if least else 0))  # stable
        return order

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        rid = request.request_id
        if rid in self._running:
            raise ValueError(f"request id {rid!r} is already running")
        running = _Running(asyncio.Queue())
        self._running[rid] = running
        running.task = asyncio.create_task(self._read(request, running))
        try:
            while True:
                delta = await running.queue.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not running.finished:
                await self.cancel(rid)
            self._running.pop(rid, None)

    async def cancel(self, request_id: str) -> None:
        running = self._running.pop(request_id, None)
        if running is None or running.finished:
            return
        running.finished = True
        running.queue.put_nowait(StreamDelta("", 0, "cancelled"))
        if running.task is not None and not running.task.done():
            running.task.cancel()  # leaving the stream's context closes the connection
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await running.task

    async def shutdown(self) -> None:
        for rid in list(self._running):
            await self.cancel(rid)
        client, self._client_obj = self._client_obj, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.aclose()
        self._client_loop = None

    def _deliver(self, running: _Running, delta: StreamDelta) -> None:
        if running.finished:
            return
        if delta.finish_reason is not None:
            running.finished = True
        if running.logprobs:  # the logprobs read so far go with the next delta
            delta = dataclasses.replace(delta, logprobs=tuple(running.logprobs))
            running.logprobs.clear()
        running.queue.put_nowait(delta)

    async def _read(self, request: GenerationRequest, running: _Running) -> None:
        import httpx

        try:
            body = request_body(request, self._model, self._flavour)
            body.update(self._options.extra_body)
        except EngineError as exc:
            self._deliver(running, StreamDelta("", 0, "error", str(exc)))
            return
        last_error = "no server"
        for attempt in range(RETRY_ROUNDS):
            waits = []
            for endpoint in self._pick():
                endpoint.in_flight += 1
                try:
                    await self._stream(endpoint, body, request, running)
                    return
                except _Refused as exc:  # refused before the first byte: the next server
                    last_error = f"{endpoint.url}: {exc}"
                    endpoint.refused(exc.retry_after)
                    waits.append(exc.retry_after or 0.0)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent
                    last_error = f"{endpoint.url}: cannot connect ({type(exc).__name__}: {exc})"
                    endpoint.refused(None)
                except (httpx.HTTPError, ValueError) as exc:
                    self._deliver(running, StreamDelta("", 0, "error", f"{endpoint.url}: {type(exc).__name__}: {exc}"))
                    return
                except Exception as exc:  # a bug here must end the request, not hang it
                    self._deliver(running, StreamDelta("", 0, "error", f"{endpoint.url}: {type(exc).__name__}: {exc}"))
                    return
                finally:
                    endpoint.in_flight -= 1
            if attempt + 1 < RETRY_ROUNDS and waits:
                await asyncio.sleep(min(MAX_RETRY_WAIT_S, max(waits)))
        self._deliver(running, StreamDelta("", 0, "error", last_error))

    async def _stream(self, endpoint: _Endpoint, body: dict[str, Any], request: GenerationRequest,
                      running: _Running) -> None:
        stops = tuple(s for s in request.stop if s)
        longest = max((len(s) for s in stops), default=0)
        text = ""
        counted = reported = 0  # tokens the server produced / tokens already delivered
        finish: FinishReason | None = None
        ids: tuple[int, ...] = ()  # token ids not delivered yet (token-out servers)
        async with self._client().stream("POST", endpoint.url + "/completions", json=body) as resp:
            if resp.status_code in RETRY_STATUSES:
                raise _Refused(f"HTTP {resp.status_code}",
                               retry_after_s(resp.headers.get("retry-after")))
            if resp.status_code != 200:
                if resp.status_code >= 500:  # a failing server: the others first for a while
                    endpoint.refused(None)
                detail = (await resp.aread()).decode(errors="replace")[:500]
                self._deliver(running, StreamDelta("", 0, "error", f"HTTP {resp.status_code}: {detail}"))
                return
            endpoint.served()
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                problem = check_chunk(chunk)
                if problem is not None:
                    self._deliver(running, StreamDelta("", 0, "error",
                                                       f"unexpected frame: {problem}"))
                    return
                if "error" in chunk:
                    self._deliver(running, StreamDelta("", 0, "error", str(chunk["error"])[:500]))
                    return
                counted += _chunk_tokens(chunk, counted)
                choices = chunk.get("choices") or []
                if not choices:
                    continue
                choice = choices[0]
                running.logprobs.extend(choice_logprobs(choice, request.logprobs))
                piece = choice.get("text") or ""
                raw_finish = choice.get("finish_reason")
                ids += chunk_token_ids(choice, raw_finish, request.stop_token_ids)
                piece += stop_to_append(text + piece, raw_finish, choice, stops)
                end = find_stop(text + piece, stops, max(0, len(text) - longest + 1)) if stops else -1
                if end >= 0:  # a stop string: cut just after it and end the request
                    self._deliver(running, StreamDelta(piece[: end - len(text)], counted - reported, "stop"))
                    return
                text += piece
                finish = finish_reason(raw_finish)
                if finish == "error":
                    self._deliver(running, StreamDelta(piece, counted - reported, "error",
                                                       f"the server finished with {raw_finish!r}"))
                    return
                if finish is not None:  # delivered now: a server may hold [DONE] back
                    self._deliver(running, StreamDelta(piece, counted - reported, finish,
                                                       token_ids=ids))
                    return
                if piece or ids:
                    self._deliver(running, StreamDelta(piece, counted - reported, token_ids=ids))
                    reported, ids = counted, ()
        self._deliver(running, StreamDelta("", 0, "error", "the stream ended without a finish reason"))


def _chunk_tokens(chunk: dict[str, Any], counted: int) -> int:
    """Tokens this chunk adds: from per-chunk usage or token ids when sent, else one per text chunk."""
    usage = chunk.get("usage")
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return max(0, usage["completion_tokens"] - counted)
    choices = chunk.get("choices") or []
    if not choices:
        return 0
    ids = choices[0].get("token_ids")
    if isinstance(ids, list):
        return len(ids)
    return 1 if choices[0].get("text") else 0


def _fetch_models(httpx: Any, url: str, headers: dict[str, str], options: OpenAIOptions) -> list[dict[str, Any]]:
    """The model cards of one server, waiting up to ``wait_ready_s`` for it to come up."""
    deadline = time.monotonic() + options.wait_ready_s
    while True:
        try:
            resp = httpx.get(url + "/models", headers=headers, timeout=options.connect_timeout_s)
            resp.raise_for_status()
            return list(resp.json().get("data") or [])
        except (httpx.HTTPError, ValueError) as exc:
            if time.monotonic() >= deadline:
                raise EngineUnavailable(f"engine 'openai': cannot list models at {url}/models: {exc}") from exc
            time.sleep(0.5)


def _context_length(card: dict[str, Any]) -> int | None:
    for holder in (card, card.get("meta") or {}):
        for key in _CONTEXT_KEYS:
            value = holder.get(key)
            if isinstance(value, int) and value > 0:
                return value
    return None
