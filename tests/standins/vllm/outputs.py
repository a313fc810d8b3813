"""STAND-IN for ``vllm.outputs`` (tests only): the fields of the real output classes (vLLM 0.32).

The real classes have more optional fields (``CompletionOutput.routed_experts`` comes before
``finish_reason``: build outputs by keyword). test_vllm_backend.py compares these with an
installed vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int] | None
    prompt_logprobs: list | None
    outputs: list[CompletionOutput]
    finished: bool
