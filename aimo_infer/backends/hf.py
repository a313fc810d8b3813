"""transformers engine: ``generate()`` on CPU or GPU, the fallback that runs wherever torch does.

One worker thread serves all requests. It takes the requests waiting at that moment (up to
``max_batch_size``) as one padded batch and runs one ``generate()`` over them. Sampling happens
in a logits processor with one seeded ``torch.Generator`` per row (``generate`` itself then
picks that token greedily), so a request's tokens follow from its own seed whatever else shares
its batch. A stopping criterion streams each row's new text to its asyncio queue and ends rows
on stop strings (matched in text), max tokens, end-of-sequence or cancellation. Requests that
arrive while a batch runs wait for the next batch (no continuous batching).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.backends.base import (
    Engine,
    EngineInfo,
    EngineUnavailable,
    FinishReason,
    GenerationRequest,
    StreamDelta,
    TokenLogprob,
    parse_engine_options,
)
from aimo_infer.backends.hf_rows import IncrementalDecoder, row_logprobs, sample_rows
from aimo_infer.backends.streaming import StopMatcher
from aimo_infer.config import EngineConfig

_SEED_MASK = (1 << 63) - 1


@dataclass(frozen=True)
class HFOptions:
    """``engine.options`` of the hf engine."""

    device: str = "auto"  # auto: cuda when available, else cpu
    # auto: bfloat16 on a GPU; float32 on a CPU, where bfloat16 matmuls are emulated unless the
    # CPU has AVX512-BF16/AMX (measured here, AVX2: 12 rows ran faster in float32).
    dtype: str = "auto"
    max_batch_size: int = 16
    batch_wait_s: float = 0.01  # after the first waiting request, wait this long for others
    add_special_tokens: bool = True  # when tokenizing text prompts
    num_threads: int | None = None  # torch CPU threads; None keeps torch's default
    context_length: int | None = None  # None: the model config's max_position_embeddings

    @classmethod
    def parse(cls, options: dict[str, Any]) -> HFOptions:
        """Options from a config table; unknown keys, wrong types and bad values: one line."""
        return parse_engine_options(cls, options, "hf", lambda o: [
            (o.max_batch_size >= 1, f"max_batch_size must be >= 1, got {o.max_batch_size}"),
            (o.dtype in ("auto", "bfloat16", "float16", "float32"),
             f"dtype must be auto, bfloat16, float16 or float32, got {o.dtype!r}"),
            (o.batch_wait_s >= 0, f"batch_wait_s must be >= 0, got {o.batch_wait_s}"),
        ])


@dataclass
class _Slot:
    """One request as the worker sees it: its queue on the caller's loop and its decoding state."""

    request: GenerationRequest
    loop: asyncio.AbstractEventLoop
    queue: asyncio.Queue[StreamDelta]
    finished: bool = False
    num_tokens: int = 0
    max_tokens: int = 0
    stops: StopMatcher | None = None  # None: no stop strings
    decoder: IncrementalDecoder | None = None
    generator: Any = None
    pending_tokens: int = 0  # tokens whose text is held back by the decoder
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)  # theirs, if asked

    def take_logprobs(self) -> tuple[TokenLogprob, ...]:
        taken, self.pending_logprobs = tuple(self.pending_logprobs), []
        return taken


class HFEngine(Engine):
    """transformers ``generate()`` behind the engine protocol (see the module docstring)."""

    def __init__(self, model: Any, tokenizer: Any, model_name: str, options: HFOptions) -> None:
        import torch

        self._torch = torch
        self._model = model
        self._tokenizer = tokenizer
        self._options = options
        self._device = next(model.parameters()).device
        cfg_len = getattr(model.config, "max_position_embeddings", None) or 2048
        self._context_length = options.context_length or int(cfg_len)
        self._eos_ids = _eos_ids(model, tokenizer)
        pad = tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self._eos_ids[0])
        self._info = EngineInfo(
            name="hf",
            model=model_name,
            context_length=self._context_length,
            tokenizer_path=getattr(tokenizer, "name_or_path", None) or None,
            deterministic=True,
            extra={"device": str(self._device), "dtype": str(model.dtype).removeprefix("torch."),
                   "max_batch_size": options.max_batch_size},
        )
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._waiting: list[_Slot] = []
        self._slots: dict[str, _Slot] = {}
        self._closed = False
        self.batch_sizes: list[int] = []  # size of every batch run, for tests and reports
        self._worker = threading.Thread(target=self._serve, name="aimo-hf-engine", daemon=True)
        self._worker.start()

    @classmethod
    def from_config(cls, config: EngineConfig) -> HFEngine:
        """Load ``config.model`` (a HF directory or a .gguf file; None: the default model)."""
        options = HFOptions.parse(dict(config.options))
        try:
            import torch
            import transformers
        except ImportError as exc:
            raise EngineUnavailable(
                f"engine 'hf' needs {exc.name}: pip install 'aimo-infer[hf]'"
            ) from exc
        path = Path(config.model) if config.model else _default_model_dir()
        if not path.exists():
            raise EngineUnavailable(f"engine 'hf': model not found: {path}")
        if options.num_threads:
            torch.set_num_threads(options.num_threads)
        device = options.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        dtype_name = options.dtype
        if dtype_name == "auto":
            dtype_name = "bfloat16" if device.startswith("cuda") else "float32"
        dtype = getattr(torch, dtype_name)
        load: dict[str, Any] = {}
        folder = path
        if path.is_file():  # a GGUF file: transformers dequantizes it on load
            folder, load["gguf_file"] = path.parent, path.name
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, **load)
        model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **load)
        model.to(device).eval()
        return cls(model, tokenizer, path.name, options)

    @property
    def info(self) -> EngineInfo:
        return self._info

    def num_running(self) -> int:
        with self._lock:
            return len(self._slots)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        slot = _Slot(request, asyncio.get_running_loop(), asyncio.Queue())
        with self._wake:
            if self._closed:
                raise RuntimeError("engine 'hf' is shut down")
            if request.request_id in self._slots:
                raise ValueError(f"request id {request.request_id!r} is already running")
            self._slots[request.request_id] = slot
            self._waiting.append(slot)
            self._wake.notify()
        try:
            while True:
                delta = await slot.queue.get()
                yield delta
                if delta.finish_reason is not None:
                    return
        finally:
            if not slot.finished:  # the caller stopped reading: free the request
                await self.cancel(request.request_id)

    async def cancel(self, request_id: str) -> None:
        with self._lock:
            slot = self._slots.get(request_id)
            if slot is None:
                return
            if slot in self._waiting:
                self._waiting.remove(slot)
            self._finish(slot, StreamDelta("", 0, "cancelled"))

    async def shutdown(self) -> None:
        with self._wake:
            self._closed = True
            for slot in list(self._slots.values()):
                self._finish(slot, StreamDelta("", 0, "cancelled"))
            self._waiting.clear()
            self._wake.notify_all()
        await asyncio.get_running_loop().run_in_executor(None, self._worker.join)

    # --- worker thread -------------------------------------------------------------------

    def _emit(self, slot: _Slot, delta: StreamDelta) -> None:
        """Hand a delta to the request's event loop; caller holds the lock."""
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
            slot.loop.call_soon_threadsafe(slot.queue.put_nowait, delta)

    def _finish(self, slot: _Slot, delta: StreamDelta) -> None:
        """Send the last delta of a request once, and release it; caller holds the lock."""
        if slot.finished:
            return
        slot.finished = True
        self._slots.pop(slot.request.request_id, None)
        self._emit(slot, delta)

    def _serve(self) -> None:
        while True:
            with self._wake:
                while not self._waiting and not self._closed:
                    self._wake.wait()
                if self._closed:
                    return
                if len(self._waiting) < self._options.max_batch_size:
                    self._wake.wait(self._options.batch_wait_s)
                batch = self._waiting[: self._options.max_batch_size]
                del self._waiting[: len(batch)]
            if batch:
                try:
                    self._run_batch(batch)
                except Exception as exc:  # report to every request of the batch, keep serving
                    with self._lock:
                        for slot in batch:
                            self._finish(slot, StreamDelta("", 0, "error", f"{type(exc).__name__}: {exc}"))

    def _prompt_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        ids = self._tokenizer(request.prompt, add_special_tokens=self._options.add_special_tokens)
        return list(ids["input_ids"])

    def _run_batch(self, batch: list[_Slot]) -> None:
        torch = self._torch
        rows: list[tuple[_Slot, list[int]]] = []
        with self._lock:
            for slot in batch:
                if slot.finished:
                    continue
                ids = self._prompt_ids(slot.request)
                room = self._context_length - len(ids)
                if not ids or room < 1:
                    reason = "empty prompt" if not ids else f"prompt of {len(ids)} tokens fills the context ({self._context_length})"
                    self._finish(slot, StreamDelta("", 0, "error", reason))
                    continue
                slot.max_tokens = min(slot.request.max_tokens, room)
                slot.stops = StopMatcher(slot.request.stop) if any(slot.request.stop) else None
                slot.decoder = IncrementalDecoder(self._tokenizer)
                slot.generator = torch.Generator().manual_seed(slot.request.seed & _SEED_MASK)
                rows.append((slot, ids))
        if not rows:
            return
        self.batch_sizes.append(len(rows))
        width = max(len(ids) for _, ids in rows)
        input_ids = torch.tensor([[self._pad_id] * (width - len(ids)) + ids for _, ids in rows])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in rows])
        slots = [slot for slot, _ in rows]
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        config = GenerationConfig(
            max_new_tokens=max(s.max_tokens for s in slots),
            do_sample=False,
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
        )
        with torch.inference_mode():
            self._model.generate(
                input_ids=input_ids.to(self._device),
                attention_mask=mask.to(self._device),
                generation_config=config,
                logits_processor=LogitsProcessorList([_RowSampler(slots)]),
                stopping_criteria=StoppingCriteriaList([_RowMonitor(self, slots)]),
            )
        with self._lock:  # rows generate() ended without our monitor ending them
            for slot in slots:
                self._finish(slot, StreamDelta("", 0, "length"))

    def _step_row(self, slot: _Slot, token: int) -> bool:
        """Account one new token of a row; return True when the row is done. Lock held."""
        if slot.finished:
            return True
        slot.num_tokens += 1
        slot.pending_tokens += 1
        finish: FinishReason | None = None
        piece = ""
        if token in self._eos_ids:
            finish = "stop"
        else:
            assert slot.decoder is not None
            piece = slot.decoder.push(token)
            if piece and slot.stops is not None:
                piece, matched = slot.stops.feed(piece)
                if matched is not None:
                    finish = "stop"
            if finish is None and slot.num_tokens >= slot.max_tokens:
                finish = "length"
        if finish is not None:
            self._finish(slot, StreamDelta(piece, slot.pending_tokens, finish,
                                           logprobs=slot.take_logprobs()))
            return True
        if piece:
            self._emit(slot, StreamDelta(piece, slot.pending_tokens, logprobs=slot.take_logprobs()))
            slot.pending_tokens = 0
        return False


class _RowSampler:
    """Logits processor that samples each row with its own generator and forces that token."""

    def __init__(self, slots: list[_Slot]) -> None:
        import torch

        reqs = [s.request for s in slots]
        self._slots = slots
        self._temperature = torch.tensor([r.temperature for r in reqs])
        self._top_p = torch.tensor([r.top_p for r in reqs])
        self._top_k = torch.tensor([r.top_k for r in reqs])
        self._min_p = torch.tensor([r.min_p for r in reqs])
        self._on_device = False

    def __call__(self, input_ids: Any, scores: Any) -> Any:
        import torch

        if not self._on_device:
            dev = scores.device
            self._temperature, self._top_p, self._top_k, self._min_p = (
                t.to(dev) for t in (self._temperature, self._top_p, self._top_k, self._min_p)
            )
            self._on_device = True
        uniforms = torch.stack([torch.rand((), generator=s.generator) for s in self._slots])
        tokens = sample_rows(scores, self._temperature, self._top_p, self._top_k, self._min_p,
                             uniforms.to(scores.device))
        if any(s.request.logprobs > 0 for s in self._slots):
            entries = row_logprobs(scores, tokens, [s.request.logprobs for s in self._slots])
            for slot, entry in zip(self._slots, entries, strict=True):
                if slot.request.logprobs > 0 and not slot.finished:
                    slot.pending_logprobs.append(entry)
        forced = torch.full_like(scores, float("-inf"))
        forced.scatter_(1, tokens.unsqueeze(1), 0.0)
        return forced


class _RowMonitor:
    """Stopping criterion: streams each row's new token and ends rows that are done."""

    def __init__(self, engine: HFEngine, slots: list[_Slot]) -> None:
        self._engine = engine
        self._slots = slots

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        tokens = input_ids[:, -1].tolist()
        with self._engine._lock:
            done = [self._engine._step_row(s, t) for s, t in zip(self._slots, tokens, strict=True)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    ids: set[int] = set()
    for source in (getattr(model, "generation_config", None), tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise EngineUnavailable("engine 'hf': the model defines no end-of-sequence token")
    return sorted(ids)


def _default_model_dir() -> Path:
    """The embedded default model as a HF directory (converted once from its GGUF)."""
    try:
        from aimo_infer.models import prepare_default_model
    except ImportError as exc:
        raise EngineUnavailable(
            "engine 'hf' needs engine.model (a HF model directory): the default model is unavailable"
        ) from exc
    prepared = prepare_default_model(with_hf_weights=True)
    if prepared.hf_dir is None:
        raise EngineUnavailable("engine 'hf': the default model has no HF weights")
    return Path(prepared.hf_dir)
