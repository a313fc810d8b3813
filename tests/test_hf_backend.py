"""transformers engine: exact per-row sampling, incremental decoding, and the engine on SmolLM2."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from aimo_infer.backends.base import EngineUnavailable, GenerationRequest  # noqa: E402
from aimo_infer.backends.hf import HFEngine, HFOptions  # noqa: E402
from aimo_infer.backends.hf_rows import IncrementalDecoder, sample_rows  # noqa: E402
from aimo_infer.config import EngineConfig  # noqa: E402

PROMPT = "<|im_start|>user\nCount from one to twenty in words.<|im_end|>\n<|im_start|>assistant\n"


def _params(rows: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
            min_p: float = 0.0) -> tuple[Any, Any, Any, Any]:
    return (torch.full((rows,), temperature), torch.full((rows,), top_p),
            torch.full((rows,), top_k, dtype=torch.long), torch.full((rows,), min_p))


def test_inverse_cdf_picks_the_token_whose_interval_holds_the_uniform() -> None:
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]])).repeat(3, 1)
    uniforms = torch.tensor([0.1, 0.6, 0.9])
    # Without filters: intervals in vocabulary order, [0, .2) [.2, .7) [.7, 1).
    assert sample_rows(logits, *_params(3), uniforms).tolist() == [0, 1, 2]
    # With a filter: intervals in order of probability, token 1 (.5), 2 (.3), 0 (.2).
    assert sample_rows(logits, *_params(3, top_p=0.999), uniforms).tolist() == [1, 2, 0]


def test_filters_remove_tokens_before_sampling() -> None:
    logits = torch.log(torch.tensor([[0.2, 0.5, 0.3]]))
    near_one = torch.tensor([0.999])
    assert sample_rows(logits, *_params(1, top_k=2), near_one).tolist() == [2]
    assert sample_rows(logits, *_params(1, top_p=0.4), near_one).tolist() == [1]
    assert sample_rows(logits, *_params(1, top_p=0.75), near_one).tolist() == [2]
    assert sample_rows(logits, *_params(1, min_p=0.5), near_one).tolist() == [2]
    assert sample_rows(logits, *_params(1, min_p=0.7), near_one).tolist() == [1]
    assert sample_rows(logits, *_params(1, temperature=0.0), near_one).tolist() == [1]


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    rows=st.integers(1, 4),
    temperature=st.sampled_from([0.0, 0.3, 0.7, 1.0, 1.5]),
    top_p=st.sampled_from([0.1, 0.5, 0.9, 0.95, 1.0]),
    top_k=st.sampled_from([0, 1, 5, 50]),
    min_p=st.sampled_from([0.0, 0.01, 0.1]),
)
def test_candidate_shortcut_equals_full_vocabulary_and_rows_are_independent(
    seed: int, rows: int, temperature: float, top_p: float, top_k: int, min_p: float
) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, 300, generator=gen) * 4
    uniforms = torch.rand(rows, generator=gen)
    params = _params(rows, temperature, top_p, top_k, min_p)
    fast = sample_rows(logits, *params, uniforms, candidates=8)
    full = sample_rows(logits, *params, uniforms, candidates=300)
    assert fast.tolist() == full.tolist()
    alone = [sample_rows(logits[i : i + 1], *(p[i : i + 1] for p in params), uniforms[i : i + 1],
                         candidates=8).item() for i in range(rows)]
    assert alone == fast.tolist()


def test_sampled_token_is_never_a_filtered_one() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 100, generator=gen) * 3
    uniforms = torch.rand(64, generator=gen)
    tokens = sample_rows(logits, *_params(64, top_k=3), uniforms, candidates=10)
    top3 = logits.topk(3, dim=-1).indices
    assert all(t in row for t, row in zip(tokens.tolist(), top3.tolist(), strict=True))


@pytest.fixture(scope="module")
def tokenizer(smollm2_gguf: Path) -> Any:
    from transformers import AutoTokenizer

    from aimo_infer.models import prepare_default_model

    return AutoTokenizer.from_pretrained(prepare_default_model(progress=False).tokenizer_dir)


@pytest.mark.parametrize("text", ["Hello, world! 12*7 = 84.", "naïve café — ∑ x² ≥ 0 🐈‍⬛ 猫", "  two  spaces\n\n"])
def test_incremental_decoder_reassembles_the_text(tokenizer: Any, text: str) -> None:
    decoder = IncrementalDecoder(tokenizer)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    pieces = [decoder.push(i) for i in ids]
    assert "".join(pieces) == tokenizer.decode(ids)
    assert all("\ufffd" not in p for p in pieces)


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['batch'\]"):
        HFOptions.parse({"batch": 4})
    with pytest.raises(ValueError, match="max_batch_size: expected int"):
        HFOptions.parse({"max_batch_size": "4"})
    with pytest.raises(ValueError, match="dtype"):
        HFOptions.parse({"dtype": "int8"})
    with pytest.raises(EngineUnavailable, match="model not found"):
        HFEngine.from_config(EngineConfig(name="hf", model="/nonexistent/model"))


def test_importing_the_adapter_does_not_import_torch() -> None:
    code = "import sys, aimo_infer.backends.hf; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.fixture(scope="module")
def engine(smollm2_hf_dir: Path) -> Any:
    eng = HFEngine.from_config(EngineConfig(name="hf", model=str(smollm2_hf_dir)))
    yield eng
    asyncio.run(eng.shutdown())


async def _text(engine: HFEngine, request: GenerationRequest) -> tuple[str, str | None]:
    text, finish = "", None
    async for delta in engine.generate(request):
        text += delta.text
        finish = delta.finish_reason
    return text, finish


@pytest.mark.slow
def test_a_seed_gives_the_same_text_alone_and_in_a_batch(engine: HFEngine) -> None:
    """Concurrent requests share one padded batch, yet each row follows its own seed."""
    short = "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"

    async def body() -> tuple[str, list[str]]:
        alone, _ = await _text(engine, GenerationRequest("alone", prompt=PROMPT, seed=7, max_tokens=16))
        before = len(engine.batch_sizes)
        batch = await asyncio.gather(*[
            _text(engine, GenerationRequest(f"b{i}", prompt=short if i % 2 else PROMPT, seed=7 + i,
                                            max_tokens=16))
            for i in range(4)
        ])
        assert max(engine.batch_sizes[before:]) > 1  # they really were batched
        return alone, [t for t, _ in batch]

    alone, batch = asyncio.run(body())
    assert batch[0] == alone


@pytest.mark.slow
def test_token_id_prompts_and_context_limit(engine: HFEngine) -> None:
    async def body() -> None:
        ids = tuple(engine._tokenizer(PROMPT)["input_ids"])
        by_ids = await _text(engine, GenerationRequest("ids", prompt_token_ids=ids, seed=3, max_tokens=8))
        by_text = await _text(engine, GenerationRequest("txt", prompt=PROMPT, seed=3, max_tokens=8))
        assert by_ids == by_text
        too_long = (1,) * engine.info.context_length
        deltas = [d async for d in engine.generate(GenerationRequest("long", prompt_token_ids=too_long))]
        assert deltas[-1].finish_reason == "error" and "context" in (deltas[-1].error or "")

    asyncio.run(body())

