"""A STAND-IN for the ``tensorrt_llm`` package, for tests only: it is not TensorRT-LLM.

It keeps the names, keyword arguments and traps the adapter must handle, as read in the 1.x
sources: ``LLM`` (PyTorch backend) and ``_tensorrt_engine.LLM`` (prebuilt engines) reject
unknown arguments; ``generate_async(inputs, sampling_params=..., streaming=True)`` needs a
running event loop and returns a ``GenerationResult`` that async-iterates itself, with
``outputs[0].text_diff``/``token_ids_diff``, ``finished``, ``abort()``/``aborted()``;
``SamplingParams.max_tokens`` defaults to 32; unset ``top_p``/``top_k`` mean greedy; stop
strings are tokenised alone and matched on token ids, so they are missed when the text
tokenises differently in context; the engine path rejects prompt + max_tokens > max_seq_len.
Also, each with its source file named where it is modelled: stop strings are not tokenised when
``end_id`` is set (``llmapi/llm.py``), a ReDrafter engine samples with temperature and seed only
and a greedy one with neither (``explicitDraftTokensLayer.cpp``, ``convert_checkpoint.py``), the
PyTorch backend rejects prompts over ``max_num_tokens`` without chunked prefill, its 1.2 sampler
ignores per-request seeds (``_torch/pyexecutor/sampler.py``), and EAGLE-3 one-model is greedy
without ``allow_advanced_sampling`` (``llmapi/llm_args.py``).
"""

from tensorrt_llm import llmapi
from tensorrt_llm.llmapi import LLM
from tensorrt_llm.sampling_params import SamplingParams

__version__ = "1.2.0+standin"
STANDIN = True

__all__ = ["LLM", "SamplingParams", "llmapi"]
