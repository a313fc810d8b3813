"""STAND-IN for ``tensorrt_llm.llmapi.llm`` (tests only): the LLM classes of both backends."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from standin_core import PieceTokenizer
from tensorrt_llm.executor import GenerationExecutor, GenerationResult
from tensorrt_llm.llmapi.llm_args import DecodingBaseConfig
from tensorrt_llm.sampling_params import SamplingParams

_COMMON_ARGS = {"max_batch_size", "max_num_tokens", "max_seq_len", "kv_cache_config",
                "enable_chunked_prefill", "speculative_config", "backend", "max_beam_width"}
_TRT_ONLY_ARGS = {"build_config", "workspace", "enable_build_cache", "extended_runtime_perf_knob_config"}
_TORCH_ONLY_ARGS = {"disable_overlap_scheduler", "cuda_graph_config", "attn_backend",
                    "moe_config", "enable_attention_dp"}


class BaseLLM:
    def __init__(
        self,
        model: str | Path,
        tokenizer: Any = None,
        tokenizer_mode: str = "auto",
        skip_tokenizer_init: bool = False,
        trust_remote_code: bool = False,
        tensor_parallel_size: int = 1,
        dtype: str = "auto",
        revision: str | None = None,
        tokenizer_revision: str | None = None,
        **kwargs: Any,
    ) -> None:
        backend = kwargs.get("backend")
        valid = _COMMON_ARGS | (_TORCH_ONLY_ARGS if backend == "pytorch" else _TRT_ONLY_ARGS)
        for key in kwargs:
            if key not in valid:
                raise ValueError(f"{self.__class__.__name__} got invalid argument: {key}")
        self.args = SimpleNamespace(**{**kwargs, "model": str(model), "backend": backend})
        self.args.max_seq_len = kwargs.get("max_seq_len")
        self._model_dir = Path(model)
        self._tokenizer: PieceTokenizer | None = None
        if tokenizer is not None and not skip_tokenizer_init:
            if not Path(tokenizer).is_dir():
                raise OSError(f"stand-in: tokenizer directory {tokenizer} not found")
            self._tokenizer = PieceTokenizer(str(tokenizer))
        self._executor: GenerationExecutor | None = None
        self.shutdown_calls = 0  # stand-in only
        self._build_model()

    def _build_model(self) -> None:
        raise NotImplementedError

    @property
    def tokenizer(self) -> PieceTokenizer | None:
        return self._tokenizer

    def standin_active(self) -> int:
        """Requests the executor still holds (stand-in only)."""
        return 0 if self._executor is None else self._executor.active()

    def generate_async(
        self,
        inputs: Any,
        sampling_params: SamplingParams | None = None,
        lora_request: Any = None,
        prompt_adapter_request: Any = None,
        streaming: bool = False,
        kv_cache_retention_config: Any = None,
        disaggregated_params: Any = None,
        trace_headers: Any = None,
        _postproc_params: Any = None,
        scheduling_params: Any = None,
        cache_salt: str | None = None,
    ) -> GenerationResult:
        if self._executor is None or self._executor.is_shutdown():
            raise RuntimeError("LLM is shutting down")
        params = self._prepare_sampling_params(sampling_params)
        if isinstance(inputs, str):
            ids = self.tokenizer.encode(inputs)
        elif isinstance(inputs, list) and all(isinstance(i, int) for i in inputs):
            ids = inputs
        elif isinstance(inputs, dict) and "prompt_token_ids" in inputs:
            ids = list(inputs["prompt_token_ids"])
        else:
            raise TypeError(f"The inputs must be type str or list of int, but got {type(inputs)}")
        self._check_arguments(len(ids), params)
        return self._executor.submit(ids, params, streaming)

    def _prepare_sampling_params(self, params: SamplingParams | None) -> SamplingParams:
        if params is None:
            params = SamplingParams()
        if not isinstance(params, SamplingParams):
            raise TypeError(f"The sampling_params must be type SamplingParams or None, but got {type(params)}")
        if params.end_id is None and self.tokenizer is None:
            raise ValueError(
                "tokenizer is required to reset end_id if it is None, or you can explicitly "
                "specify the end_id for sampling_params"
            )
        return params._setup(self.tokenizer or PieceTokenizer())

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        pass

    def shutdown(self) -> None:
        self.shutdown_calls += 1
        if self._executor is not None:
            self._executor.shutdown()
            self._executor = None


class _TrtLLM(BaseLLM):
    """Prebuilt engine directories: ``config.json`` with a ``build_config``."""

    def _build_model(self) -> None:
        config_path = self._model_dir / "config.json"
        if not config_path.is_file():
            raise ValueError(f"stand-in: {self._model_dir} is not an engine directory")
        config = json.loads(config_path.read_text())
        if "build_config" not in config:
            raise ValueError(f"stand-in: {self._model_dir} is not an engine directory")
        self._engine_max_seq_len = int(config["build_config"]["max_seq_len"])
        greedy = bool(config.get("pretrained_config", {}).get("redrafter_greedy_search", False))
        self._executor = GenerationExecutor(self._tokenizer or PieceTokenizer(), greedy)

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        max_seq_len = self.args.max_seq_len or self._engine_max_seq_len
        if prompt_len + (params.max_tokens or 0) > max_seq_len:
            raise ValueError(
                f"The sum of prompt length ({prompt_len}) and query length (0) max_tokens "
                f"({params.max_tokens}) should not exceed max_seq_len ({max_seq_len})"
            )


class _TorchLLM(BaseLLM):
    """The PyTorch backend on a Hugging Face checkpoint directory."""

    def __init__(self, model: str | Path, tokenizer: Any = None, **kwargs: Any) -> None:
        backend = kwargs.pop("backend", "pytorch")
        super().__init__(model, tokenizer, backend=backend, **kwargs)

    def _build_model(self) -> None:
        if not (self._model_dir / "config.json").is_file():
            raise OSError(f"stand-in: {self._model_dir} has no config.json")
        if self._tokenizer is None:
            self._tokenizer = PieceTokenizer(str(self._model_dir))
        spec = getattr(self.args, "speculative_config", None)
        if spec is not None and not isinstance(spec, DecodingBaseConfig):
            raise TypeError(f"speculative_config must be a DecodingBaseConfig, got {type(spec)}")
        self._executor = GenerationExecutor(self._tokenizer, greedy_engine=False)


class LLM(_TorchLLM):
    pass
