"""A STAND-IN for the ``vllm`` package, for tests only: it is not vLLM and runs no model.

It keeps the names, keyword arguments and behaviour the adapter relies on, as read in vLLM's
sources: ``AsyncEngineArgs`` (a dataclass: unknown options fail), ``AsyncLLM.from_engine_args``,
``generate(prompt, sampling_params, request_id)`` as an async generator of ``RequestOutput``,
``abort(request_id)`` ending the stream with finish reason "abort", ``SamplingParams`` with
``max_tokens=16`` and ``output_kind`` CUMULATIVE by default, engine-side stop strings.
"""

from vllm.sampling_params import RequestOutputKind, SamplingParams

__version__ = "0.0.0+standin"
STANDIN = True

__all__ = ["RequestOutputKind", "SamplingParams"]
