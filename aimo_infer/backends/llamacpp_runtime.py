"""A thin owner of one llama.cpp model, context and batch, through llama-cpp-python's C bindings.

Every ctypes call of the llama.cpp engine lives here. The object is not thread-safe: exactly one
thread (the engine's decode loop) creates, uses and closes it.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

# llama.cpp's CPU threads meet at a barrier after every operation. OpenMP's default spin-wait
# collapses throughput (10x seen) when another process holds a core; sleeping waiters do not.
# Read once, when the OpenMP library loads with llama.cpp; an explicit user setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import llama_cpp as lc

from aimo_infer.backends.base import EngineUnavailable

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

    def new_sampler(
        self, *, seed: int, temperature: float, top_p: float, top_k: int, min_p: float
    ) -> int:
        """A sampler chain with its own seed: temperature first, then top-k, top-p, min-p.

        The order follows transformers and vLLM, so one config samples alike on every engine.
        Temperature <= 0 means greedy.
        """
        chain_params = lc.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        chain = lc.llama_sampler_chain_init(chain_params)
        if temperature <= 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_greedy())
            return chain
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_temp(temperature))
        if top_k > 0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_k(top_k))
        if 0.0 < top_p < 1.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_top_p(top_p, 1))
        if min_p > 0.0:
            lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_min_p(min_p, 1))
        lc.llama_sampler_chain_add(chain, lc.llama_sampler_init_dist(seed & 0xFFFFFFFF))
        return chain

    def sample(self, sampler: int, output_index: int) -> int:
        """Sample (and accept) a token from the logits of batch row ``output_index``."""
        return int(lc.llama_sampler_sample(sampler, self._ctx, output_index))

    @staticmethod
    def free_sampler(sampler: int) -> None:
        lc.llama_sampler_free(sampler)

    # -- KV memory -------------------------------------------------------------------------------

    def copy_prefix(self, src: int, dst: int, n_tokens: int) -> None:
        """Give sequence ``dst`` the KV of the first ``n_tokens`` of sequence ``src``."""
        lc.llama_memory_seq_rm(self._memory, dst, -1, -1)
        # Whole-sequence copy: across per-sequence streams llama.cpp copies only full buffers.
        lc.llama_memory_seq_cp(self._memory, src, dst, -1, -1)
        lc.llama_memory_seq_rm(self._memory, dst, n_tokens, -1)

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
