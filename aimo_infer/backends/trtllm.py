"""TensorRT-LLM adapter: a prebuilt engine directory (ReDrafter, FP8) or the PyTorch backend.

(a) An engine directory (``config.json`` with a ``build_config``, or ``engine.json`` saying
``trt-engine``) loads through ``tensorrt_llm._tensorrt_engine.LLM`` with ``tokenizer=`` the HF
directory; ReDrafter exists only on this path, through TensorRT-LLM 1.2.x.
(b) Anything else loads through ``tensorrt_llm.LLM`` (the PyTorch backend), whose speculative
decoding (EAGLE-3, n-gram, draft-target) comes from ``options["speculative_config"]``.

Options: ``backend`` ("trt" | "pytorch"; default: detected), ``tokenizer`` (HF directory; for
engines also read from engine.json), ``max_seq_len``, ``end_id``/``pad_id``,
``speculative_config`` (a table with ``decoding_type``); the rest go to the ``LLM`` constructor.

Known traps handled here (1.2-era sources): ``max_tokens`` defaults to 32 and must fit
``max_seq_len``; unset top-p/top-k fall back to engine defaults; engine stop strings are
tokenised alone and can be missed (the shared stream logic matches stop text too), and are
not tokenised at all when ``end_id`` is set (so ``end_id`` travels as a stop token id); a
ReDrafter engine samples with temperature and seed only, and a greedy one ignores both; the
PyTorch backend rejects prompts over ``max_num_tokens`` unless chunked prefill is on, and up
to 1.2 ignores per-request seeds and min-p; EAGLE-3 one-model decodes greedily unless
``allow_advanced_sampling``. ``stats()`` says what the engine honours and what it ignored.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
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
    import_engine_package,
    ranked_logprobs,
)
from aimo_infer.config import EngineConfig
from aimo_infer.manifest import EngineManifest, load_manifest, load_options

log = logging.getLogger(__name__)

WHERE = "on a GPU machine (TensorRT-LLM 1.2.x for ReDrafter engines; Python 3.10 or 3.12)"
# A ReDrafter engine reads only temperature and seed (explicitDraftTokensLayer.cpp), so a
# greedy request there is a very low temperature: the most likely token all but always.
REDRAFTER_GREEDY_TEMPERATURE = 1e-3
ALL_FILTERS = ("temperature", "top_k", "top_p", "min_p", "seed")
SEEDED_TORCH_SAMPLER = (1, 3)  # per-request seeds and min-p reach TorchSampler after 1.2


def trtllm_sampling_kwargs(
    request: GenerationRequest, max_tokens: int, redrafter: bool = False
) -> dict[str, Any]:
    """``SamplingParams`` keywords for one request, each trap set explicitly.

    ``max_tokens`` (default 32), ``top_p`` and ``top_k`` (None: the runtime default, which can
    be greedy) are always passed; temperature 0 becomes top-k 1, the runtime's greedy form,
    except on a ReDrafter engine, which ignores top-k: there it is a very low temperature.
    """
    greedy = request.temperature <= 0.0
    temperature = request.temperature
    if greedy:
        temperature = REDRAFTER_GREEDY_TEMPERATURE if redrafter else 1.0
    kwargs: dict[str, Any] = {
        "max_tokens": max_tokens,
        "seed": request.seed,
        "temperature": temperature,
        "top_p": 1.0 if greedy else request.top_p,
        "top_k": 1 if greedy else max(0, request.top_k),  # 0: all tokens
        "stop": list(request.stop) or None,
        "include_stop_str_in_output": True,
    }
    if request.min_p > 0.0:
        kwargs["min_p"] = request.min_p
    if request.logprobs > 0:
        kwargs["logprobs"] = request.logprobs
    return kwargs


def asked_filters(request: GenerationRequest) -> list[str]:
    """The filters a sampling request asks for beyond temperature (none when it is greedy)."""
    if request.temperature <= 0.0:
        return []
    asked = [("top_p", request.top_p < 1.0), ("top_k", request.top_k > 0),
             ("min_p", request.min_p > 0.0)]
    return [name for name, on in asked if on]


def redrafter_settings(path: Path, manifest: EngineManifest | None) -> dict[str, Any] | None:
    """A ReDrafter engine's drafter settings, or None for any other engine.

    The engine's own ``config.json`` (``pretrained_config``, written by ReDrafter's
    ``convert_checkpoint.py``) is the truth, so engines built by hand are seen too; greedy is
    its default (``--redrafter_no_greedy_search`` is store_false). ``engine.json`` fills in.
    """
    pretrained = _read_json(path / "config.json").get("pretrained_config", {})
    if str(pretrained.get("architecture", "")).startswith("ReDrafter"):
        return {"kind": "redrafter",
                "greedy": bool(pretrained.get("redrafter_greedy_search", True)),
                "num_beams": pretrained.get("redrafter_num_beams"),
                "draft_len": pretrained.get("redrafter_draft_len_per_beam")}
    if manifest is not None and manifest.drafter.get("kind") == "redrafter":
        return {**manifest.drafter, "greedy": bool(manifest.drafter.get("greedy", True))}
    return None


def torch_sampler_seeded(version: str) -> bool:
    """Whether this TensorRT-LLM's PyTorch sampler honours per-request seeds (after 1.2)."""
    m = re.match(r"(\d+)\.(\d+)", version)
    return m is not None and (int(m.group(1)), int(m.group(2))) >= SEEDED_TORCH_SAMPLER


def trtllm_logprobs(completion: Any, k: int) -> tuple[TokenLogprob, ...]:
    """A streamed output's new logprobs (``logprobs_diff``): the PyTorch backend gives one
    ``{token_id: Logprob}`` per token (the top k; the sampled token is not guaranteed among
    them), the engine path (1.2) only the sampled token's logprob, as a float per token."""
    return ranked_logprobs(completion.token_ids_diff, getattr(completion, "logprobs_diff", None), k)


def is_engine_dir(path: Path, manifest: EngineManifest | None) -> bool:
    """A prebuilt TensorRT engine directory, as opposed to a checkpoint for the PyTorch backend."""
    if manifest is not None:
        return manifest.backend == "trt-engine"
    return "build_config" in _read_json(path / "config.json")


def engine_max_seq_len(path: Path, manifest: EngineManifest | None) -> int | None:
    """The sequence limit an engine was built with (prompt plus generated tokens)."""
    if manifest is not None and manifest.max_seq_len:
        return int(manifest.max_seq_len)
    value = _read_json(path / "config.json").get("build_config", {}).get("max_seq_len")
    return int(value) if value else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


class TRTLLMEngine(StreamingEngine):
    """TensorRT-LLM's ``LLM`` (engine or PyTorch backend) behind the engine protocol."""

    def __init__(
        self,
        llm: Any,
        sampling_params_cls: Any,
        info: EngineInfo,
        token_ids: dict[str, int] | None = None,
        honours: list[str] | None = None,
        redrafter: bool = False,
    ) -> None:
        super().__init__(info)
        self._llm = llm
        self._sampling_params_cls = sampling_params_cls
        self._token_ids = token_ids or {}  # end_id / pad_id when the config sets them
        self._results: dict[str, Any] = {}
        self._honours = list(ALL_FILTERS if honours is None else honours)
        self._redrafter = redrafter
        self._ignored: dict[str, int] = {}  # filter -> requests that asked for it in vain
        self._greedy_as_low_temperature = 0
        self._warned: set[str] = set()

    def stats(self) -> dict[str, object]:
        """What the engine really sampled with: the filters it honours, those requests asked
        for in vain, and greedy requests sent as a very low temperature (ReDrafter)."""
        return {"sampling": {"honours": list(self._honours), "ignored": dict(self._ignored),
                             "greedy_as_low_temperature": self._greedy_as_low_temperature}}

    def _note_sampling(self, request: GenerationRequest) -> None:
        """Count (and warn once per filter) what this request asks that the engine ignores."""
        if self._redrafter and request.temperature <= 0.0:
            self._greedy_as_low_temperature += 1
        ignored = [f for f in asked_filters(request) if f not in self._honours]
        for name in ignored:
            self._ignored[name] = self._ignored.get(name, 0) + 1
        new = [f for f in ignored if f not in self._warned]
        if new:
            self._warned.update(new)
            how = f"it samples with {', '.join(self._honours)} only" if self._honours else (
                "it decodes greedily")
            log.warning("trtllm: this engine ignores %s (%s)", ", ".join(new), how)

    @classmethod
    def from_config(cls, config: EngineConfig) -> TRTLLMEngine:
        """Load ``config.model``: an engine directory or a checkpoint (see the module docstring)."""
        trtllm = import_engine_package("tensorrt_llm", "trtllm", WHERE)
        if not config.model:
            raise EngineUnavailable(
                "engine 'trtllm' needs a model: set engine.model to an engine directory or a "
                "Hugging Face checkpoint directory"
            )
        path = Path(config.model)
        options = dict(config.options)
        backend = options.pop("backend", None)
        if backend not in (None, "trt", "pytorch"):
            raise EngineError(f"engine 'trtllm': backend must be 'trt' or 'pytorch', not {backend!r}")
        token_ids = {k: int(options.pop(k)) for k in ("end_id", "pad_id") if k in options}
        try:
            manifest = load_manifest(path) if path.is_dir() else None
        except ValueError as exc:
            raise EngineError(f"engine 'trtllm': {exc}") from exc
        use_engine = backend == "trt" or (backend is None and is_engine_dir(path, manifest))
        version = str(getattr(trtllm, "__version__", "unknown"))
        redrafter = redrafter_settings(path, manifest) if use_engine else None
        identical: str | None = None
        if use_engine:
            llm, tokenizer = _load_engine_dir(path, manifest, options)
            max_seq_len = options.get("max_seq_len") or engine_max_seq_len(path, manifest)
            if redrafter is not None and redrafter["greedy"]:
                identical = (
                    "this ReDrafter engine was built with greedy drafting: it ignores "
                    "temperature, so all seeds give the same stream (rebuild with "
                    "--redrafter_no_greedy_search for diverse streams)"
                )
            honours = list(ALL_FILTERS)
            if redrafter is not None:  # temperature and seed only; a greedy one, neither
                honours = [] if redrafter["greedy"] else ["temperature", "seed"]
        else:
            # engine.json's load options (real LLM argument names) under the caller's options
            options = {**load_options(manifest, "trtllm-pytorch"), **options}
            # A resumed TIR stream is a prompt of up to max_seq_len tokens: past max_num_tokens
            # (8192 by default) the PyTorch backend rejects it unless prefill is chunked.
            options.setdefault("enable_chunked_prefill", True)
            llm, tokenizer, identical = _load_pytorch(trtllm, path, options)
            honours = ["temperature", "top_k", "top_p"]
            if torch_sampler_seeded(version):
                honours += ["min_p", "seed"]
            max_seq_len = (
                options.get("max_seq_len")
                or getattr(llm.args, "max_seq_len", None)
                or _read_json(path / "config.json").get("max_position_embeddings")
            )
        if not max_seq_len:
            llm.shutdown()
            raise EngineError(
                f"engine 'trtllm': cannot tell the max sequence length of {path}; "
                "set engine.options.max_seq_len"
            )

        if identical is not None:
            log.warning("trtllm: %s", identical)
        seeds_reproducible = "seed" in honours or identical is not None
        if not seeds_reproducible:
            log.warning("trtllm: TensorRT-LLM %s's PyTorch sampler ignores per-request seeds: "
                        "a seed does not reproduce its stream", version)
        info = EngineInfo(
            name="trtllm",
            model=str(path),
            context_length=int(max_seq_len),
            tokenizer_path=tokenizer,
            deterministic=identical is not None,
            extra={
                "backend": "trt" if use_engine else "pytorch",
                "identical_seeds": identical is not None,
                "seeds_reproducible": seeds_reproducible,
                "drafter": redrafter or (dict(manifest.drafter) if manifest else {}),
                "sampling_honours": honours,
                "version": version,
            },
        )
        return cls(llm, trtllm.SamplingParams, info, token_ids, honours, redrafter is not None)

    async def _prompt_token_ids(self, request: GenerationRequest) -> list[int]:
        if request.prompt_token_ids is not None:
            return list(request.prompt_token_ids)
        # The prompt is chat-template output, which writes its own special tokens (BOS too).
        return list(self._llm.tokenizer.encode(request.prompt, add_special_tokens=False))

    async def _stream(
        self, request: GenerationRequest, prompt_ids: list[int], max_tokens: int
    ) -> AsyncIterator[RawDelta]:
        self._note_sampling(request)
        kwargs = trtllm_sampling_kwargs(request, max_tokens, redrafter=self._redrafter)
        if "pad_id" in self._token_ids:
            kwargs["pad_id"] = self._token_ids["pad_id"]
        if "end_id" in self._token_ids:
            # With end_id set, LLM._prepare_sampling_params skips SamplingParams._setup, the
            # only place stop strings are tokenised, and every stop-string request fails. So
            # end_id goes as a stop token and the LLM keeps setting up the stop strings.
            kwargs["stop_token_ids"] = [self._token_ids["end_id"]]
        params = self._sampling_params_cls(**kwargs)
        # Called inside the running event loop: the result then streams through an asyncio queue.
        result = self._llm.generate_async(prompt_ids, sampling_params=params, streaming=True)
        rid = request.request_id
        self._results[rid] = result
        try:
            async for out in result:
                completion = out.outputs[0]
                yield RawDelta(
                    text=completion.text_diff,
                    num_tokens=len(completion.token_ids_diff),
                    finish_reason=completion.finish_reason if out.finished else None,
                    stop_reason=completion.stop_reason,
                    logprobs=trtllm_logprobs(completion, request.logprobs),
                )
        finally:
            self._results.pop(rid, None)
            if not result.finished and not result.aborted():
                result.abort()  # the consumer left early: free the engine's slot

    async def _abort(self, request_id: str) -> None:
        result = self._results.get(request_id)
        if result is not None and not result.finished and not result.aborted():
            result.abort()

    async def _close(self) -> None:
        self._llm.shutdown()


def _load_engine_dir(
    path: Path, manifest: EngineManifest | None, options: dict[str, Any]
) -> tuple[Any, str]:
    """A prebuilt engine through ``tensorrt_llm._tensorrt_engine.LLM`` with its HF tokenizer."""
    from tensorrt_llm._tensorrt_engine import LLM

    tokenizer = options.pop("tokenizer", None) or (manifest.tokenizer_path if manifest else None)
    if not tokenizer:
        raise EngineUnavailable(
            f"engine 'trtllm': the engine directory {path} needs its Hugging Face tokenizer: set "
            "engine.options.tokenizer (or tokenizer_path in its engine.json)"
        )
    try:
        return LLM(model=str(path), tokenizer=str(tokenizer), **options), str(tokenizer)
    except Exception as exc:
        raise EngineError(f"engine 'trtllm' failed to load the engine {path}: {exc}") from exc


def _load_pytorch(
    trtllm: Any, path: Path, options: dict[str, Any]
) -> tuple[Any, str, str | None]:
    """A checkpoint through the PyTorch backend, with speculative decoding from the options;
    also why every seed gives the same stream on it (None when they differ)."""
    spec = options.pop("speculative_config", None)
    if isinstance(spec, dict):
        spec = _speculative_config(trtllm, spec)
    if spec is not None:
        options["speculative_config"] = spec
    tokenizer = str(options.get("tokenizer") or path)
    identical = None
    if (type(spec).__name__ == "EagleDecodingConfig" and getattr(spec, "eagle3_one_model", False)
            and not getattr(spec, "allow_advanced_sampling", False)):
        identical = ("EAGLE-3 one-model decoding without allow_advanced_sampling is greedy: all "
                     "seeds give the same stream")
    try:
        return trtllm.LLM(model=str(path), **options), tokenizer, identical
    except Exception as exc:
        raise EngineError(f"engine 'trtllm' failed to load {path}: {exc}") from exc


def _speculative_config(trtllm: Any, spec: dict[str, Any]) -> Any:
    """A speculative config object from a TOML table: ``decoding_type`` names the class as
    TensorRT-LLM does (``Eagle``, with ``eagle3_one_model`` for EAGLE-3 on 1.2; ``NGram``;
    ``DraftTarget``; ``MTP``), the other keys are its fields."""
    kind = spec.get("decoding_type")
    if not kind:
        raise EngineError(
            "engine 'trtllm': speculative_config needs decoding_type "
            "(Eagle for EAGLE-3, NGram, DraftTarget or MTP)"
        )
    config_cls = getattr(trtllm.llmapi, f"{kind}DecodingConfig", None)
    if config_cls is None:
        known = sorted(
            name.removesuffix("DecodingConfig")
            for name in dir(trtllm.llmapi)
            if name.endswith("DecodingConfig")
        )
        raise EngineError(
            f"engine 'trtllm': unknown decoding_type {kind!r}; this TensorRT-LLM has {known}"
        )
    fields = {k: v for k, v in spec.items() if k != "decoding_type"}
    if kind == "Eagle" and "allow_advanced_sampling" not in fields:
        # EAGLE-3 one-model samples greedily unless this is set (1.2 era; a no-op later). A
        # version without the field rejects it: then the streams are greedy, and reported so.
        try:
            return config_cls(**fields, allow_advanced_sampling=True)
        except Exception:
            pass
    try:
        return config_cls(**fields)
    except Exception as exc:
        raise EngineError(f"engine 'trtllm': bad speculative_config {spec!r}: {exc}") from exc
