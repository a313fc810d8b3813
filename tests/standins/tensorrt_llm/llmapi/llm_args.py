"""STAND-IN for ``tensorrt_llm.llmapi.llm_args`` speculative configs (tests only).

As in the real package, ``tensorrt_llm.llmapi`` exports the concrete classes, not the base.
"""

from __future__ import annotations

from typing import Any, ClassVar


class DecodingBaseConfig:
    """Strict like the real pydantic models: unknown fields are rejected."""

    decoding_type: ClassVar[str] = ""
    # allow_advanced_sampling: "For non-greedy sampling on 1-model" (1.2 era; later a no-op).
    _fields: ClassVar[dict[str, Any]] = {"max_draft_len": None, "speculative_model_dir": None,
                                         "allow_advanced_sampling": False}

    def __init__(self, **kwargs: Any) -> None:
        fields = {**DecodingBaseConfig._fields, **type(self)._fields}
        extra = sorted(set(kwargs) - set(fields))
        if extra:
            raise ValueError(f"{type(self).__name__}: extra inputs are not permitted: {extra}")
        for name, default in fields.items():
            setattr(self, name, kwargs.get(name, default))
        self.validate()

    def validate(self) -> None:
        pass


class EagleDecodingConfig(DecodingBaseConfig):
    decoding_type = "Eagle"
    _fields: ClassVar[dict[str, Any]] = {"eagle3_one_model": True, "greedy_sampling": True, "num_eagle_layers": None}

    def validate(self) -> None:
        if not self.max_draft_len:
            raise ValueError("max_draft_len must be > 0 for Eagle")
        if self.speculative_model_dir is None:
            raise ValueError("Draft model must be provided for EAGLE")


class NGramDecodingConfig(DecodingBaseConfig):
    decoding_type = "NGram"
    _fields: ClassVar[dict[str, Any]] = {"max_matching_ngram_size": 0, "is_keep_all": True, "is_use_oldest": True,
               "is_public_pool": True}


class DraftTargetDecodingConfig(DecodingBaseConfig):
    decoding_type = "DraftTarget"
    _fields: ClassVar[dict[str, Any]] = {}

    def validate(self) -> None:
        if self.speculative_model_dir is None:
            raise ValueError("Draft model must be provided for draft-target decoding")


class MTPDecodingConfig(DecodingBaseConfig):
    decoding_type = "MTP"
    _fields: ClassVar[dict[str, Any]] = {"num_nextn_predict_layers": 1}
