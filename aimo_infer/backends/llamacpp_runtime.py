"""A thin owner of one llama.cpp model, context and batch, through llama-cpp-python's C bindings.

Every ctypes call of the llama.cpp engine lives here. The object is not thread-safe: exactly one
thread (the engine's decode loop) creates, uses and closes it.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import llama_cpp as lc
import numpy as np

from aimo_infer.backends.base import EngineUnavailable, TokenLogprob
from aimo_infer.backends.sampling import RowSampler, SamplingParams

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 8192


@dataclass(frozen=True)
class ContextSettings:
    """How the llama.cpp context is built."""

    n_ctx_seq: int | None  # tokens one sequence can hold; None: the model's, at most 8192
    n_seq_max: int  # sequences the context holds at once
    n_threads: int
    n_batch: int  # tokens per llama_decode call
    kv_unified: bool  # one KV buffer shared by all sequences (else one stream per sequence)
    flash_attn: bool | None  # None: llama.cpp decides
    kv_type: str = "f16"  # "f16" or "q8_0" (half the memory; turns flash attention on)
    # Fewer threads while other processes use our cores (``aimo_infer.backends.cpu_share``).
    adapt_threads: bool = True


_FLOAT_FILE_TYPES = {
    str(t) for t in (lc.LLAMA_FTYPE_ALL_F32, lc.LLAMA_FTYPE_MOSTLY_F16, lc.LLAMA_FTYPE_MOSTLY_BF16)
}
_KV_TYPES = {"f16": lc.GGML_TYPE_F16, "q8_0": lc.GGML_TYPE_Q8_0}
_backend_lock = threading.Lock()
_backend_ready = False


def _quiet_log(level: int, text: bytes, _user_data: ctypes.c_void_p) -> None:
    # Failures surface as return codes; the log (level numbers vary by version) is for debugging.
    log.debug("llama.cpp[%d]: %s", level, text.decode(errors="replace").rstrip())


_LOG_CALLBACK = lc.llama_log_callback(_quiet_log)  # kept alive for the process


def _init_backend() -> None:
    """Initialise llama.cpp once per process and route its chatty log to Python logging."""
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            lc.llama_log_set(_LOG_CALLBACK, ctypes.c_void_p(0))
            lc.llama_backend_init()
            _backend_ready = True


# Weight types a GGUF can be rewritten to. f16 holds a 4-bit file's values exactly (to f16
# rounding), q8_0 to within 1/254 of each 32-weight block's largest; both decode many sequences
# faster than Q4_1 on AVX2 (llama.cpp's tiled matrix products), one sequence slower.
WEIGHT_TYPES = {"f16": lc.LLAMA_FTYPE_MOSTLY_F16, "q8_0": lc.LLAMA_FTYPE_MOSTLY_Q8_0}


def convert_gguf(source: Path, target: Path, weight_type: str, n_threads: int) -> None:
    """Write ``source`` with every weight matrix stored as ``weight_type`` (llama.cpp's quantizer)."""
    ftype = WEIGHT_TYPES.get(weight_type)
    if ftype is None:
        raise EngineUnavailable(f"unknown weight type {weight_type!r}: {sorted(WEIGHT_TYPES)}")
    _init_backend()
    params = lc.llama_model_quantize_default_params()
    params.ftype = ftype
    params.allow_requantize = True  # the source is already quantized; f16/q8_0 widen it
    params.nthread = n_threads
    rc = lc.llama_model_quantize(str(source).encode(), str(target).encode(), params)
    if rc != 0:
        raise EngineUnavailable(f"llama.cpp could not convert {source} to {weight_type} (code {rc})")


class LlamaRuntime:
    """One model, one context with many sequences, one reusable batch."""

    NO_KV_SLOT = 1  # llama_decode: no room in the KV memory for this batch (state restored)

    def __init__(self, gguf_path: Path, settings: ContextSettings) -> None:
        _init_backend()
        self.settings = settings
        model_params = lc.llama_model_default_params()
        model_params.n_gpu_layers = 0
        self._model = lc.llama_model_load_from_file(str(gguf_path).encode(), model_params)
        if not self._model:
            raise EngineUnavailable(f"llama.cpp could not load the GGUF file {gguf_path}")
        self._vocab = lc.llama_model_get_vocab(self._model)
        # Float weight matrices take a different matrix-product path for one token than for many,
        # so a stream's logits depend on the batch around it; 8-bit and 4-bit ones do not (seen
        # here: the same seed gives the same text alone and among 12 with Q4_1 and q8_0, not f16).
        self.batch_invariant = self._meta("general.file_type") not in _FLOAT_FILE_TYPES
        self.n_ctx_train = int(lc.llama_model_n_ctx_train(self._model))
        self.n_vocab = int(lc.llama_vocab_n_tokens(self._vocab))
        n_ctx_seq = settings.n_ctx_seq or min(DEFAULT_CONTEXT, self.n_ctx_train)

        params = lc.llama_context_default_params()
        params.n_ctx = n_ctx_seq * settings.n_seq_max  # unified or not: room for every sequence
        params.n_batch = settings.n_batch
        params.n_ubatch = settings.n_batch
        params.n_seq_max = settings.n_seq_max
        params.n_threads = settings.n_threads
        params.n_threads_batch = settings.n_threads
        params.kv_unified = settings.kv_unified
        params.no_perf = True
        if settings.flash_attn is not None:
            params.flash_attn_type = (
                lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
                if settings.flash_attn
                else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
            )
        if settings.kv_type != "f16":
            kv_type = _KV_TYPES.get(settings.kv_type)
            if kv_type is None:
                raise EngineUnavailable(f"unknown KV cache type {settings.kv_type!r}: f16 or q8_0")
            params.type_k = params.type_v = kv_type
            params.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED
        self._ctx = lc.llama_init_from_model(self._model, params)
        if not self._ctx:
            lc.llama_model_free(self._model)
            raise EngineUnavailable(
                f"llama.cpp could not create a context of {params.n_ctx} tokens "
                f"for {settings.n_seq_max} sequences (out of memory?)"
            )
        self._memory = lc.llama_get_memory(self._ctx)
        self.n_ctx_seq = min(n_ctx_seq, int(lc.llama_n_ctx_seq(self._ctx)))
        self._batch = lc.llama_batch_init(settings.n_batch, 0, 1)
        self._pieces: dict[int, bytes] = {}
        self._piece_buf = ctypes.create_string_buffer(256)
        self._eog = {t for t in range(self.n_vocab) if lc.llama_vocab_is_eog(self._vocab, t)}
        self._bos = int(lc.llama_vocab_bos(self._vocab))
        self._add_bos = bool(lc.llama_vocab_get_add_bos(self._vocab))

    def _meta(self, key: str) -> str | None:
        buf = ctypes.create_string_buffer(128)
        n = lc.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode(errors="replace") if n >= 0 else None

    # -- text ------------------------------------------------------------------------------------

    def tokenize(self, text: str) -> list[int]:
        """Token ids of a rendered prompt; special tokens in the text are parsed as such."""
        data = text.encode()
        capacity = len(data) + 8
        buf = (lc.llama_token * capacity)()
        n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, True)
        if n < 0:
            capacity = -n
            buf = (lc.llama_token * capacity)()
            n = lc.llama_tokenize(self._vocab, data, len(data), buf, capacity, False, True)
        tokens = list(buf[:n])
        if self._add_bos and (not tokens or tokens[0] != self._bos):
            tokens.insert(0, self._bos)
        return tokens

    def piece(self, token: int) -> bytes:
        """The bytes one token adds to the text (possibly part of a UTF-8 character)."""
        cached = self._pieces.get(token)
        if cached is None:
            buf = self._piece_buf
            n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = lc.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, True)
            cached = self._pieces[token] = buf.raw[:n]
        return cached

    def is_eog(self, token: int) -> bool:
        """Whether the token ends generation (end of turn, end of text)."""
        return token in self._eog

    # -- sampling --------------------------------------------------------------------------------

    @staticmethod
    def new_sampler(
        *, seed: int, temperature: float, top_p: float, top_k: int, min_p: float
    ) -> RowSampler:
        """A sampler with its own seed (``aimo_infer.backends.sampling``; greedy at temperature 0).

        Not llama.cpp's sampler chain: that sorts the whole vocabulary for every top-p draw.
        """
        return RowSampler(SamplingParams(temperature, top_p, top_k, min_p), seed)

    def sample(self, sampler: RowSampler, output_index: int) -> int:
        """Sample a token from the logits of batch row ``output_index`` of the last decode."""
        pointer = lc.llama_get_logits_ith(self._ctx, output_index)
        if not pointer:
            raise RuntimeError(f"llama.cpp has no logits for batch row {output_index}")
        return sampler.sample(np.ctypeslib.as_array(pointer, shape=(self.n_vocab,)))

    def sample_with_logprobs(
        self, sampler: RowSampler, output_index: int, k: int
    ) -> tuple[int, TokenLogprob]:
        """``sample``, with the token's logprob and the top ``k`` alternatives."""
        pointer = lc.llama_get_logits_ith(self._ctx, output_index)
        if not pointer:
            raise RuntimeError(f"llama.cpp has no logits for batch row {output_index}")
        row = np.ctypeslib.as_array(pointer, shape=(self.n_vocab,))
        return sampler.sample_with_logprobs(row, k)

    def set_threads(self, n_threads: int) -> None:
        """Threads for the following decodes (llama.cpp reads it at every graph run)."""
        lc.llama_set_n_threads(self._ctx, n_threads, n_threads)

    # -- KV memory -------------------------------------------------------------------------------

    def copy_prefix(self, src: int, dst: int, n_tokens: int) -> None:
        """Give sequence ``dst`` the KV of the first ``n_tokens`` of sequence ``src``."""
        lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
        # Whole-sequence copy: across per-sequence streams llama.cpp copies only full buffers.
        lc.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        lc.llama_memory_seq_rm(self._memory, dst, n_tokens, -1)

    def move(self, src: int, dst: int) -> None:
        """Give sequence ``dst`` all of sequence ``src``'s KV and empty ``src``.

        Across streams llama.cpp copies the whole buffer when the next decode starts (about
        20 ms here for 8192 cells); copies run in the order they were asked for.
        """
        lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
        lc.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        lc.llama_memory_seq_rm(self._memory, src, -1, -1)

    def truncate(self, seq_id: int, n_tokens: int) -> None:
        """Keep only the first ``n_tokens`` positions of a sequence (0 clears it)."""
        lc.llama_memory_seq_rm(self._memory, seq_id, n_tokens if n_tokens > 0 else -1, -1)

    # -- decoding --------------------------------------------------------------------------------

    def decode(
        self, tokens: list[int], positions: list[int], seq_ids: list[int], outputs: list[bool]
    ) -> int:
        """Run one llama_decode over parallel lists (at most n_batch rows); 0 on success."""
        batch = self._batch
        b_token, b_pos, b_nseq, b_seq, b_logits = (
            batch.token,
            batch.pos,
            batch.n_seq_id,
            batch.seq_id,
            batch.logits,
        )
        for i, token in enumerate(tokens):
            b_token[i] = token
            b_pos[i] = positions[i]
            b_nseq[i] = 1
            b_seq[i][0] = seq_ids[i]
            b_logits[i] = outputs[i]
        batch.n_tokens = len(tokens)
        return int(lc.llama_decode(self._ctx, batch))

    def close(self) -> None:
        """Free the batch, context and model (idempotent)."""
        if self._ctx:
            lc.llama_batch_free(self._batch)
            lc.llama_free(self._ctx)
            lc.llama_model_free(self._model)
            self._ctx = None
            self._model = None
