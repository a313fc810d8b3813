"""STAND-IN for ``tensorrt_llm.llmapi`` (tests only), not TensorRT-LLM."""

from tensorrt_llm.llmapi.llm import LLM
from tensorrt_llm.llmapi.llm_args import (
    DraftTargetDecodingConfig,
    EagleDecodingConfig,
    MTPDecodingConfig,
    NGramDecodingConfig,
)
from tensorrt_llm.sampling_params import SamplingParams

__all__ = [
    "LLM",
    "DraftTargetDecodingConfig",
    "EagleDecodingConfig",
    "MTPDecodingConfig",
    "NGramDecodingConfig",
    "SamplingParams",
]
