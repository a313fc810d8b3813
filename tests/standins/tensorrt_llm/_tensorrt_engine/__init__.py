"""STAND-IN for ``tensorrt_llm._tensorrt_engine`` (tests only): the prebuilt-engine LLM."""

from tensorrt_llm.llmapi.llm import _TrtLLM as LLM

__all__ = ["LLM"]
