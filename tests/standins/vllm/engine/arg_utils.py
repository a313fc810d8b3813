"""STAND-IN for ``vllm.engine.arg_utils`` (tests only): a dataclass, so unknown options fail.

A few of the real ``AsyncEngineArgs`` fields (vLLM 0.32), with the real defaults.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class AsyncEngineArgs:
    model: str = "Qwen/Qwen3-0.6B"
    tokenizer: str | None = None
    trust_remote_code: bool = False
    dtype: str = "auto"
    seed: int = 0
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.92
    kv_cache_memory_bytes: int | None = None
    quantization: str | None = None
    enable_prefix_caching: bool | None = None
    max_num_seqs: int | None = None
    enforce_eager: bool = False
    tensor_parallel_size: int = 1
    speculative_config: dict[str, Any] | None = None
    disable_log_stats: bool = False
    enable_log_requests: bool = False
