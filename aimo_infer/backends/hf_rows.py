"""Per-row pieces of the transformers engine: exact seeded sampling and incremental decoding.

``sample_rows`` draws one token per batch row from that row's own uniform number, so a row's
tokens depend on its seed and its logits only, never on the other rows of the batch.
torch is imported by the caller; this module only needs it at call time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from aimo_infer.backends.base import TokenLogprob

if TYPE_CHECKING:
    import torch


def sample_rows(
    logits: torch.Tensor,
    temperature: torch.Tensor,
    top_p: torch.Tensor,
    top_k: torch.Tensor,
    min_p: torch.Tensor,
    uniforms: torch.Tensor,
    candidates: int = 512,
) -> torch.Tensor:
    """One token id per row of ``logits`` (rows, vocab) by inverse-CDF sampling.

    Per row: temperature (<= 0 means greedy), then top-k (0 disables), min-p and top-p filters
    over the sorted distribution; ``uniforms`` in [0, 1) pick the token. Pure and row-independent.
    Only the ``candidates`` most likely tokens are sorted (a full sort of the vocabulary costs
    more than the forward pass of a small model on a CPU); rows whose kept set might reach past
    them are redone over the whole vocabulary, so the result is exact. Rows without any filter
    need no order at all and sample in vocabulary order.
    """
    import torch

    logits = logits.float()
    vocab = logits.shape[-1]
    scaled = logits / temperature.clamp(min=1e-5).unsqueeze(1)
    width = min(vocab, max(candidates, int(top_k.max())))
    values, order = scaled.topk(width, dim=-1, sorted=True)
    probs = (values - scaled.logsumexp(dim=-1, keepdim=True)).exp()
    rank = torch.arange(width, device=probs.device).unsqueeze(0)
    keep = (top_k.unsqueeze(1) <= 0) | (rank < top_k.unsqueeze(1))
    keep &= probs >= min_p.unsqueeze(1) * probs[:, :1]
    keep &= probs.cumsum(dim=-1) - probs < top_p.unsqueeze(1)
    keep[:, 0] = True  # the most likely token always survives the filters
    # Every filter keeps a prefix of the sorted order, so the kept tokens are ranks < num_kept.
    num_kept = keep.sum(dim=-1, keepdim=True)
    cdf = (probs * keep).cumsum(dim=-1)
    target = (uniforms.to(cdf.dtype) * cdf[:, -1]).unsqueeze(1)
    index = torch.minimum(torch.searchsorted(cdf, target, right=True), num_kept - 1)
    sampled = order.gather(1, index).squeeze(1)
    unfiltered = (top_k <= 0) & (top_p >= 1.0) & (min_p <= 0.0)
    if bool(unfiltered.any()):
        rows = unfiltered.nonzero().squeeze(1)
        full_cdf = scaled[rows].softmax(dim=-1).cumsum(dim=-1)
        at = (uniforms[rows].to(full_cdf.dtype) * full_cdf[:, -1]).unsqueeze(1)
        sampled[rows] = torch.searchsorted(full_cdf, at, right=True).clamp(max=vocab - 1).squeeze(1)
    spill = keep[:, -1] & (temperature > 0) & ~unfiltered if width < vocab else None
    if spill is not None and bool(spill.any()):
        rows = spill.nonzero().squeeze(1)
        sampled[rows] = sample_rows(logits[rows], temperature[rows], top_p[rows], top_k[rows],
                                    min_p[rows], uniforms[rows], candidates=vocab)
    return torch.where(temperature <= 0, logits.argmax(dim=-1), sampled)


def row_logprobs(
    logits: torch.Tensor, tokens: torch.Tensor, ks: Sequence[int]
) -> list[TokenLogprob]:
    """Per row: the chosen token's log-probability and the top ``ks[row]`` alternatives, from
    the log-softmax of the raw logits (before temperature and truncation), in one batched pass."""
    logprobs = logits.float().log_softmax(dim=-1)
    k_max = max(ks)
    top_values, top_ids = logprobs.topk(k_max, dim=-1, sorted=True) if k_max else (None, None)
    chosen = logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1).tolist()
    values = top_values.tolist() if top_values is not None else [[] for _ in ks]
    ids = top_ids.tolist() if top_ids is not None else [[] for _ in ks]
    rows = zip(tokens.tolist(), chosen, ids, values, ks, strict=True)
    entries = []
    for token, logprob, top_ids_row, top_values_row, k in rows:
        pairs = zip(top_ids_row[:k], top_values_row[:k], strict=True)
        top = tuple((int(i), min(v, 0.0)) for i, v in pairs)
        entries.append(TokenLogprob(int(token), min(logprob, 0.0), top))
    return entries


class IncrementalDecoder:
    """Turns a growing list of token ids into text deltas without re-decoding everything.

    Decodes a short window so that tokenizers that merge neighbouring pieces (leading spaces,
    multi-byte characters) give the right text; holds back text that ends in an incomplete
    UTF-8 character (U+FFFD) until the next token completes it.
    """

    def __init__(self, tokenizer: Any, skip_special_tokens: bool = True) -> None:
        self._tokenizer = tokenizer
        self._skip = skip_special_tokens
        self._ids: list[int] = []
        self._prefix = 0  # window start
        self._read = 0  # tokens already turned into text

    def _decode(self, ids: Sequence[int]) -> str:
        return str(self._tokenizer.decode(list(ids), skip_special_tokens=self._skip))

    def push(self, token_id: int) -> str:
        """Add one token; return the new text it completes (possibly empty)."""
        self._ids.append(token_id)
        before = self._decode(self._ids[self._prefix : self._read])
        after = self._decode(self._ids[self._prefix :])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(self._ids)
        return after[len(before) :]
