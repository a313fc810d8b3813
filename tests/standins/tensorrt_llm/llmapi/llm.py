"""STAND-IN for ``tensorrt_llm.llmapi.llm`` (tests only): the LLM classes of both backends.

Kept from the real ``tensorrt_llm/llmapi/llm.py`` (read at commit 4c05a748):
``_prepare_sampling_params`` calls ``SamplingParams._setup`` (which tokenises stop strings)
only when ``end_id`` is None; ``_check_arguments`` on the PyTorch backend rejects a prompt
longer than ``max_num_tokens`` unless ``enable_chunked_prefill`` is on (defaults from
``llmapi/llm_args.py``: 8192 and False), and on the engine path rejects prompt + max_tokens
over the engine's ``max_seq_len``.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from standin_core import PieceTokenizer
from tensorrt_llm.executor import GenerationExecutor, GenerationResult
from tensorrt_llm.llmapi.llm_args import DecodingBaseConfig
from tensorrt_llm.sampling_params import SamplingParams

DEFAULT_MAX_NUM_TOKENS = 8192  # llm_args.py: BaseLlmArgs.max_num_tokens
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
        if params.end_id is None:
            if self.tokenizer is None:
                raise ValueError(
                    "tokenizer is required to reset end_id if it is None, or you can explicitly "
                    "specify the end_id for sampling_params"
                )
            params._setup(self.tokenizer)  # only here: with end_id set, stop strings stay raw
        return params

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
        pretrained = config.get("pretrained_config", {})
        redrafter = str(pretrained.get("architecture", "")).startswith("ReDrafter")
        # convert_checkpoint.py writes redrafter_greedy_search (default True, the flag
        # --redrafter_no_greedy_search is store_false) into the engine's config.json.
        greedy = redrafter and bool(pretrained.get("redrafter_greedy_search", True))
        self._executor = GenerationExecutor(self._tokenizer or PieceTokenizer(), greedy,
                                            mode="redrafter" if redrafter else "trt")

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
        # EAGLE-3 one-model samples greedily unless allow_advanced_sampling (1.2 era).
        greedy = (type(spec).__name__ == "EagleDecodingConfig"
                  and bool(getattr(spec, "eagle3_one_model", False))
                  and not getattr(spec, "allow_advanced_sampling", False))
        import tensorrt_llm

        seeded = _major_minor(tensorrt_llm.__version__) > (1, 2)  # per-request seeds after 1.2
        self._executor = GenerationExecutor(self._tokenizer, greedy_engine=greedy, mode="torch",
                                            seeded=seeded)

    def _check_arguments(self, prompt_len: int, params: SamplingParams) -> None:
        if getattr(self.args, "enable_chunked_prefill", False):
            return
        max_num_tokens = getattr(self.args, "max_num_tokens", None) or DEFAULT_MAX_NUM_TOKENS
        if prompt_len > max_num_tokens:
            raise ValueError(
                f"The sum of prompt length ({float(prompt_len)}), query length (0) should not "
                f"exceed max_num_tokens ({max_num_tokens})"
            )


class LLM(_TorchLLM):
    pass


def _major_minor(version: str) -> tuple[int, int]:
    major, minor = [*version.split("+")[0].split("."), "0"][:2]
    return int(major), int(minor)
