"""llama.cpp engine (the embedded default): many seeded streams batched in one CPU context.

A background thread owns the model and runs the decode loop (``llamacpp_loop``); this module is
the asyncio face of it: ``generate`` enqueues a request and yields the deltas the thread sends
back through ``loop.call_soon_threadsafe``. With no model given it serves the packaged default
model (SmolLM2-135M-Instruct), prepared into the cache on first use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    GenerationRequest,
    StreamDelta,
    parse_engine_options,
)
from aimo_infer.backends.cpu_share import usable_cores
from aimo_infer.config import EngineConfig
from aimo_infer.models import DEFAULT_WEIGHTS, WEIGHTS


@dataclass(frozen=True)
class LlamaCppOptions:
    """Adapter options (``EngineConfig.options``)."""

    n_ctx: int | None = None  # tokens per sequence; None: the model's context, at most 8192
    n_threads: int | None = None  # None: the cores this process may use
    # Fewer threads while other processes use those cores (threads spin at llama.cpp's barriers,
    # fast alone, slow beside a busy process): see aimo_infer.backends.cpu_share.
    adapt_threads: bool = True
    n_batch: int = 512  # tokens per llama_decode call (prompt chunks share it with decoding)
    max_sequences: int = 16  # requests decoded together; finished ones stay cached in spare slots
    # One KV stream per sequence: a stream's text does not depend on what else is in the batch
    # (True shares one buffer: cheaper prefix copies, but batch-dependent rounding).
    kv_unified: bool = False
    flash_attn: bool | None = None  # None: llama.cpp decides
    kv_type: str = "q8_0"  # KV cache: q8_0 (half of f16's memory, same speed here) or f16
    prefix_cache: bool = True  # reuse the KV of shared prompt prefixes
    min_prefix_tokens: int = 16  # shorter shared prefixes are recomputed
    tokenizer: str | None = None  # HF tokenizer directory for a custom GGUF (chat template)
    # Default model only: f16 or q8_0 (written once into the cache; faster for 12 streams on
    # AVX2; f16 fastest, q8_0 batch-independent) or "packaged" (the shipped Q4_1 file).
    weights: str = DEFAULT_WEIGHTS
    cache_dir: str | None = None  # cache root for the default model
    progress: bool = True  # progress display while preparing the default model




def _option_checks(o: LlamaCppOptions) -> list[tuple[bool, str]]:
    counts = {k: getattr(o, k) for k in ("n_ctx", "n_threads", "n_batch", "max_sequences")}
    return [
        *((v is None or v >= 1, f"{k} must be >= 1, got {v}") for k, v in counts.items()),
        (o.min_prefix_tokens >= 0, f"min_prefix_tokens must be >= 0, got {o.min_prefix_tokens}"),
        (o.kv_type in ("f16", "q8_0"), f"kv_type must be f16 or q8_0, got {o.kv_type!r}"),
        (o.weights in WEIGHTS, f"weights must be one of {sorted(WEIGHTS)}, got {o.weights!r}"),
    ]


def parse_options(options: dict[str, Any]) -> LlamaCppOptions:
    """Options from a config table; unknown keys, wrong types and bad values: one clear line."""
    return parse_engine_options(LlamaCppOptions, options, "llamacpp", _option_checks)


class LlamaCppEngine(Engine):
    """In-flight batching over llama.cpp's C API: one context, one sampler chain per request."""

    def __init__(
        self,
        gguf_path: Path,
        model_name: str,
        tokenizer_path: Path | None,
        options: LlamaCppOptions = LlamaCppOptions(),
    ) -> None:
        from aimo_infer.backends.llamacpp_loop import DecodeLoop
        from aimo_infer.backends.llamacpp_runtime import ContextSettings, LlamaRuntime

        settings = ContextSettings(
            n_ctx_seq=options.n_ctx,
            n_seq_max=options.max_sequences,
            n_threads=options.n_threads or usable_cores(),
            n_batch=options.n_batch,
            kv_unified=options.kv_unified,
            flash_attn=options.flash_attn,
            kv_type=options.kv_type,
            adapt_threads=options.adapt_threads,
        )
        self._options = options
        self._model_name = model_name
        self._gguf_path = gguf_path
        self._tokenizer_path = tokenizer_path
        self._lock = threading.Lock()
        self._running: dict[str, GenerationRequest] = {}  # what the caller still waits for
        self._closed = False
        self._loop = DecodeLoop(
            runtime_factory=lambda: LlamaRuntime(gguf_path, settings),
            prefix_cache=options.prefix_cache,
            min_prefix_tokens=options.min_prefix_tokens,
            on_finished=self._forget,
        )
        self._settings = settings
        ready = threading.Event()
        failure: list[BaseException] = []

        def on_ready(error: BaseException | None) -> None:
            if error is not None:
                failure.append(error)
            ready.set()

        self._thread = threading.Thread(
            target=self._loop.run, args=(on_ready,), name="llamacpp-decode", daemon=True
        )
        self._thread.start()
        ready.wait()
        if failure:
            self._thread.join()
            error = failure[0]
            if isinstance(error, EngineError):
                raise error
            raise EngineUnavailable(f"llama.cpp could not start: {error}") from error

    @classmethod
    def from_config(cls, config: EngineConfig) -> LlamaCppEngine:
        """A GGUF path in ``config.model``, or None for the default model (prepared on first use)."""
        if importlib.util.find_spec("llama_cpp") is None:
            raise EngineUnavailable(
                "the llamacpp engine needs llama-cpp-python; run `pip install 'aimo-infer[cpu]'`"
            )
        options = parse_options(config.options)
        if config.model is None:
            from aimo_infer.models import prepare_default_model

            cache = Path(options.cache_dir) if options.cache_dir else None
            prepared = prepare_default_model(
                cache, progress=options.progress, weights=options.weights
            )
            gguf = prepared.weights_path(options.weights)
            assert gguf is not None  # prepare_default_model raises when it could not write it
            return cls(gguf, prepared.name, prepared.tokenizer_dir, options)
        path = Path(config.model).expanduser()
        if not path.is_file():
            raise EngineUnavailable(f"llamacpp: GGUF file not found: {path}")
        tokenizer = Path(options.tokenizer).expanduser() if options.tokenizer else None
        return cls(path, path.stem, tokenizer, options)

    @property
    def info(self) -> EngineInfo:
        return EngineInfo(
            name="llamacpp",
            model=self._model_name,
            context_length=self._loop.n_ctx_seq,
            tokenizer_path=str(self._tokenizer_path) if self._tokenizer_path else None,
            # Same seed, same text, whatever else is batched: not with float weights.
            deterministic=self._loop.batch_invariant,
            token_io=True,  # prompt_token_ids, stop_token_ids and per-delta token_ids
            extra={
                "gguf": str(self._gguf_path),
                "n_threads": self._settings.n_threads,
                "adapt_threads": self._settings.adapt_threads,
                "max_sequences": self._settings.n_seq_max,
                "kv_unified": self._settings.kv_unified,
                "kv_type": self._settings.kv_type,
            },
        )

    def stats(self) -> dict[str, int]:
        """Token counters of the decode loop (prompt, prefilled, reused, generated, steps)."""
        return dataclasses.asdict(self._loop.stats)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        from aimo_infer.backends.llamacpp_loop import Cancel, DeltaSink, Submit

        loop = asyncio.get_running_loop()
        deltas: asyncio.Queue[StreamDelta] = asyncio.Queue()
        with self._lock:
            if self._closed or not self._thread.is_alive():
                raise EngineError("the llamacpp engine has been shut down")
            if request.request_id in self._running:
                raise EngineError(f"request id {request.request_id!r} is already running")
            self._running[request.request_id] = request
        self._loop.post(Submit(request, DeltaSink(loop, deltas)))
        finished = False
        try:
            while not finished:
                delta = await deltas.get()
                finished = delta.finish_reason is not None
                yield delta
        finally:
            if not finished:  # the consumer stopped reading: free the sequence
                self._forget(request)
                self._loop.post(Cancel(request.request_id))

    async def cancel(self, request_id: str) -> None:
        """End one request at the next step; returns once its slot is free."""
        from aimo_infer.backends.llamacpp_loop import Cancel

        with self._lock:
            if request_id not in self._running or not self._thread.is_alive():
                return
        await self._round_trip(lambda done: Cancel(request_id, done))

    def num_running(self) -> int:
        with self._lock:
            return len(self._running)

    async def shutdown(self) -> None:
        """Cancel what runs, free the context and model, and join the decode thread."""
        from aimo_infer.backends.llamacpp_loop import Shutdown

        with self._lock:
            self._closed = True
        if self._thread.is_alive():
            await self._round_trip(Shutdown)
        self._thread.join()

    async def _round_trip(self, make: Callable[[Callable[[], None]], Any]) -> None:
        """Post a command whose ``done`` callback resolves a future here; stop if the thread dies."""
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def resolve() -> None:
            loop.call_soon_threadsafe(lambda: done.done() or done.set_result(None))

        self._loop.post(make(resolve))
        while not done.done() and self._thread.is_alive():
            await asyncio.wait({done}, timeout=0.5)

    def _forget(self, request: GenerationRequest) -> None:
        """Stop counting a request (only that object: its id may already be in use again)."""
        with self._lock:
            if self._running.get(request.request_id) is request:
                del self._running[request.request_id]

    def __del__(self) -> None:
        thread = getattr(self, "_thread", None)
        if thread is not None and thread.is_alive() and not self._closed:
            from aimo_infer.backends.llamacpp_loop import Shutdown

            self._loop.post(Shutdown())
