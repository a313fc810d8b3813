"""Engine adapters behind one protocol, created by name with a clear error for a missing extra."""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass

from aimo_infer.backends.base import (
    Engine,
    EngineError,
    EngineInfo,
    EngineUnavailable,
    GenerationRequest,
    StreamDelta,
    TokenLogprob,
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
    "TokenLogprob",
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


# The packages each engine imports (its extra installs them); checked before the adapter loads.
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {
    "llamacpp": ("llama_cpp",),
    "hf": ("torch", "transformers"),
    "vllm": ("vllm",),
    "trtllm": ("tensorrt_llm",),
    "openai": ("httpx",),
    "replay": (),
}


def missing_extra_message(name: str, package: str) -> str:
    """The one line that tells a user which extra to install for an engine."""
    extra = ENGINES[name].extra
    hint = f": pip install 'aimo-infer[{extra}]'" if extra else ""
    return f"engine {name!r} needs {package}{hint}"


def create_engine(config: EngineConfig) -> Engine:
    """Build the engine named in ``config``; unknown names and missing extras get one clear line."""
    entry = ENGINES.get(config.name)
    if entry is None:
        known = ", ".join(sorted(ENGINES))
        raise EngineUnavailable(f"unknown engine {config.name!r}; known engines: {known}")
    for package in ENGINE_PACKAGES.get(config.name, ()):
        if importlib.util.find_spec(package) is None:
            raise EngineUnavailable(missing_extra_message(config.name, package))
    try:
        module = importlib.import_module(entry.module)
    except ModuleNotFoundError as exc:  # a dependency of the engine package itself is missing
        top = (exc.name or "").split(".")[0]
        if top.startswith("aimo_infer"):
            raise
        raise EngineUnavailable(missing_extra_message(config.name, top)) from exc
    cls = getattr(module, entry.cls)
    return cls.from_config(config)
