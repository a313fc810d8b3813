"""STAND-IN for ``vllm.logprobs`` (tests only): the ``Logprob`` record of vllm/logprobs.py.

Real vLLM returns, per generated token, ``{token_id: Logprob}`` with the top ``logprobs``
tokens and the sampled one (which may rank past them), from the raw logits by default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


def standin_logprobs(token: int, position: int, seed: int, greedy: bool, k: int) -> dict[int, Logprob]:
    """The fake model's distribution at one step (stand-in only): alternatives at logprobs
    -0.7, -1.7, -2.7, ...; greedy picks rank 1, sampling a rank that cycles 1..k+1 with seed
    and position, so the sampled token is sometimes past the top k (then added, as vLLM does)."""
    rank = 1 if greedy else (seed + position) % (k + 1) + 1
    others = iter(100_000 + position * 64 + j for j in range(k + 1))
    ids = [token if r == rank else next(others) for r in range(1, k + 1)]
    table = {i: Logprob(-(0.7 + r), r + 1) for r, i in enumerate(ids)}
    if rank > k:
        table[token] = Logprob(-(0.7 + rank - 1), rank)
    return table
