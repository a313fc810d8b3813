"""The fast sampler against a plain full-sort reference, and its seeded draws."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from aimo_infer.backends import sampling
from aimo_infer.backends.sampling import (
    RowSampler,
    SamplingParams,
    nucleus,
    sample_token,
    top_k_desc,
)


def reference(row: np.ndarray, p: SamplingParams) -> tuple[list[int], np.ndarray, float]:
    """Textbook definition over the whole vocabulary in float64.

    Returns the kept ids (ascending), their probabilities, and how far the top-p cut's
    cumulative mass lies from its target (a cut closer than float32 rounding is ambiguous).
    """
    x = row.astype(np.float64)
    if p.temperature <= 0:
        return [int(np.argmax(x))], np.ones(1), 1.0
    order = np.argsort(-x, kind="stable")
    w = np.exp((x[order] - x.max()) / p.temperature)
    if 0 < p.top_k < x.size:
        order, w = order[: p.top_k], w[: p.top_k]
    margin = 1.0
    if p.top_p < 1.0:
        cumulative = np.cumsum(w) / w.sum()
        cut = int(np.searchsorted(cumulative, p.top_p, side="left")) + 1
        margin = float(np.min(np.abs(cumulative - p.top_p)))
        order, w = order[:cut], w[:cut]
    if p.min_p > 0:
        keep = w >= p.min_p * w.max()
        margin = min(margin, float(np.min(np.abs(w / w.max() - p.min_p))))
        order, w = order[keep], w[keep]
    ids = np.argsort(order)
    return [int(i) for i in order[ids]], w[ids] / w.sum(), margin


logit_rows = st.integers(2, 400).flatmap(
    lambda n: st.tuples(
        st.integers(0, 2**32 - 1),
        st.just(n),
        st.sampled_from([0.5, 2.0, 6.0]),  # spread of the logits: peaked to flat
    )
)


def make_row(seed: int, n: int, spread: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    row = rng.standard_normal(n) * spread
    row[rng.integers(0, n)] += spread * 3  # a clear favourite, as language models have
    return row.astype(np.float32)


params = st.builds(
    SamplingParams,
    temperature=st.sampled_from([0.0, 0.3, 0.6, 1.0, 1.5]),
    top_p=st.sampled_from([1.0, 0.999999, 0.99, 0.95, 0.8, 0.5, 0.1]),
    top_k=st.sampled_from([0, 1, 5, 40]),
    min_p=st.sampled_from([0.0, 0.0, 0.05, 0.3]),
)


@pytest.mark.parametrize("lines", [sampling.LINES, (0.5, 0.0), (0.0,)])
@settings(max_examples=150, deadline=None)
@given(case=logit_rows, p=params)
def test_nucleus_matches_the_full_sort_reference(lines, case, p) -> None:
    # Every choice of weight lines must give the same set: the lines only save work.
    row = make_row(*case)
    want_ids, want_probs, margin = reference(row, p)
    assume(margin > 1e-5)  # a cut within float32 rounding of its target may fall either way
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sampling, "LINES", lines)
        ids, probs = nucleus(row, p)
    assert list(ids) == want_ids
    np.testing.assert_allclose(probs, want_probs, rtol=1e-4, atol=1e-9)


def test_ties_rank_the_lower_id_first() -> None:
    row = np.array([1.0, 3.0, 3.0, 3.0, 0.0], dtype=np.float32)
    ids, _ = nucleus(row, SamplingParams(1.0, top_k=2))
    assert list(ids) == [1, 2]
    ids, probs = nucleus(row, SamplingParams(1.0, top_p=0.3))
    assert list(ids) == [1] and probs[0] == 1.0


def test_a_vocabulary_sized_row_with_a_nucleus_past_the_first_line() -> None:
    # 49,152 near-equal logits: the first lines do not hold 95% of the mass, the last does.
    rng = np.random.default_rng(3)
    row = (rng.standard_normal(49152) * 0.5).astype(np.float32)
    p = SamplingParams(0.6, top_p=0.95)
    want_ids, want_probs, _margin = reference(row, p)
    ids, probs = nucleus(row, p)
    assert list(ids) == want_ids and len(ids) > 10_000
    np.testing.assert_allclose(probs, want_probs, rtol=1e-4)


def test_draws_follow_the_nucleus_probabilities() -> None:
    row = np.log(np.array([0.5, 0.3, 0.15, 0.04, 0.01], dtype=np.float32))
    p = SamplingParams(1.0, top_p=0.9)  # keeps 0.5, 0.3, 0.15: renormalised to 0.526, 0.316, 0.158
    sampler = RowSampler(p, seed=7)
    draws = np.bincount([sampler.sample(row) for _ in range(20_000)], minlength=5) / 20_000
    np.testing.assert_allclose(draws[:3], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95], atol=0.015)
    assert draws[3] == draws[4] == 0


def test_seeds_reproduce_and_differ() -> None:
    rng = np.random.default_rng(0)
    rows = [(rng.standard_normal(1000) * 2).astype(np.float32) for _ in range(50)]
    p = SamplingParams(0.8, top_p=0.95)

    def run(seed: int) -> list[int]:
        sampler = RowSampler(p, seed)
        return [sampler.sample(r) for r in rows]

    assert run(11) == run(11)
    assert run(11) != run(12)


def test_greedy_and_the_uniform_draw_edges() -> None:
    row = np.array([0.1, 2.0, 1.9], dtype=np.float32)
    assert RowSampler(SamplingParams(0.0), seed=1).sample(row) == 1
    p = SamplingParams(1.0)
    assert sample_token(row, p, 0.0) == 0
    assert sample_token(row, p, 0.999999999) == 2


@pytest.mark.parametrize("size", [50, 49_152, 50_001])
def test_top_k_desc_matches_a_full_sort(size: int) -> None:
    rng = np.random.default_rng(size)
    for _ in range(20):
        row = (rng.normal(size=size) * rng.uniform(0.5, 8)).astype(np.float32)
        for k in (1, 5, 20):
            expected = np.argsort(-row.astype(np.float64), kind="stable")[:k]
            assert top_k_desc(row, k).tolist() == expected.tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.6, 1.0])
def test_sample_with_logprobs_draws_as_sample_and_reports_log_softmax(temperature: float) -> None:
    rng = np.random.default_rng(3)
    params = SamplingParams(temperature, top_p=0.9)
    plain, with_lp = RowSampler(params, 42), RowSampler(params, 42)
    for _ in range(30):
        row = (rng.normal(size=4096) * 4).astype(np.float32)
        token, entry = with_lp.sample_with_logprobs(row, 5)
        assert token == plain.sample(row) == entry.token
        shifted = row.astype(np.float64) - row.max()
        log_softmax = shifted - np.log(np.exp(shifted).sum())
        assert entry.logprob == pytest.approx(log_softmax[token], abs=1e-4)
        best = np.argsort(-log_softmax, kind="stable")[:5]
        assert [t for t, _ in entry.top] == best.tolist()
        assert [lp for _, lp in entry.top] == pytest.approx(log_softmax[best].tolist(), abs=1e-4)
