"""STAND-IN for ``tensorrt_llm.sampling_params`` (tests only): real field names and defaults.

Kept from the real ``tensorrt_llm/sampling_params.py``: stop strings are tokenised by
``_setup`` only, and ``_get_stop_words`` raises when ``_setup`` never ran (which is what
``LLM._prepare_sampling_params`` does when ``end_id`` is set, see ``llmapi/llm.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, kw_only=True)
class SamplingParams:
    end_id: int | None = None
    pad_id: int | None = None
    max_tokens: int = 32
    bad: str | list[str] | None = None
    bad_token_ids: list[int] | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    include_stop_str_in_output: bool = False
    n: int = 1
    best_of: int | None = None
    use_beam_search: bool = False
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    min_p: float | None = None
    detokenize: bool = True
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    ignore_eos: bool = False
    _stop_word_ids: list[tuple[str, list[int]]] | None = field(default=None, init=False, repr=False)

    def _setup(self, tokenizer: Any, hf_model_config: Any = None, generation_config: Any = None):
        """Fill end/pad ids from the tokenizer and tokenise each stop string on its own."""
        if self.end_id is None:
            self.end_id = tokenizer.eos_token_id
        if self.pad_id is None:
            self.pad_id = tokenizer.pad_token_id
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        self._stop_word_ids = [(s, tokenizer.encode(s, add_special_tokens=False)) for s in stops]
        return self

    def _get_stop_words(self) -> list[list[int]]:
        """Stop token ids and tokenised stop strings; raises, as the real one does, when the
        stop strings were never tokenised (``tensorrt_llm/sampling_params.py``)."""
        words = [[i] for i in self.stop_token_ids or []]
        if self.stop is None:
            return words
        if self._stop_word_ids is None:
            raise RuntimeError(
                f"{self.__class__.__name__}.stop ({self.stop}) is not processed by tokenizer, "
                "please call the setup method."
            )
        return words + [ids for _s, ids in self._stop_word_ids]

    @property
    def greedy(self) -> bool:
        """The runtime's default top-k 0 and top-p 0 decode greedily (stand-in rule)."""
        no_top_k = self.top_k in (None, 0)
        return (no_top_k and self.top_p in (None, 0.0)) or self.top_k == 1
