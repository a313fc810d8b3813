"""Engine adapters behind one protocol, created by name with a clear error for a missing extra."""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    GenerationRequest,
    StreamDelta,
)
from aimo_infer.config import EngineConfig

__all__ = [
    "ENGINES",
    "Engine",
    "EngineError",
    "EngineInfo",
    "EngineUnavailable",
    "GenerationRequest",
    "StreamDelta",
    "create_engine",
]


@dataclass(frozen=True)
class EngineEntry:
    """Where an adapter lives and which pyproject extra installs its engine."""

    module: str
    cls: str
    extra: str | None
    summary: str


ENGINES: dict[str, EngineEntry] = {
    "llamacpp": EngineEntry(
        "aimo_infer.backends.llamacpp", "LlamaCppEngine", "cpu",
        "llama.cpp on the CPU (embedded default, SmolLM2-135M unless a GGUF is given)",
    ),
    "hf": EngineEntry(
        "aimo_infer.backends.hf", "HFEngine", "hf", "transformers generate() on CPU or GPU"
    ),
    "vllm": EngineEntry("aimo_infer.backends.vllm", "VLLMEngine", "vllm", "vLLM AsyncLLM"),
    "trtllm": EngineEntry(
        "aimo_infer.backends.trtllm", "TRTLLMEngine", "trtllm",
        "TensorRT-LLM (prebuilt engine with ReDrafter, or the PyTorch backend)",
    ),
    "openai": EngineEntry(
        "aimo_infer.backends.openai", "OpenAIEngine", "openai",
        "any OpenAI-compatible /v1/completions server (trtllm-serve, vllm serve, llama.cpp)",
    ),
    "replay": EngineEntry(
        "aimo_infer.backends.replay", "ReplayEngine", None,
        "replays scripted or recorded completions (tests, policy simulation)",
    ),
}


def create_engine(config: EngineConfig) -> Engine:
    """Build the engine named in ``config``; unknown names and missing extras get one clear line."""
    entry = ENGINES.get(config.name)
    if entry is None:
        known = ", ".join(sorted(ENGINES))
        raise EngineUnavailable(f"unknown engine {config.name!r}; known engines: {known}")
    module = importlib.import_module(entry.module)
    cls = getattr(module, entry.cls)
    return cls.from_config(config)
