"""Engine throughput: raw tokens/s with 1 and 12 seeded streams, and through the solve loop.

For each engine asked for (default: the embedded llama.cpp engine with its packaged model) the
same workload runs three ways in one process, repeats interleaved, medians reported: one stream
alone, 12 seeded streams together straight on the engine (the baseline), and the same 12 streams
through the solve loop (``Controller``, chain-of-thought profile, no code). The last line reads
``default_engine_12stream_tok_per_s=N``.

    python benchmarks/engine_throughput.py [--engines llamacpp,hf] [--max-tokens 128] [--repeats 3]
    python benchmarks/engine_throughput.py --engines llamacpp,llamacpp:weights=packaged
    python benchmarks/engine_throughput.py --logprobs 5   # adds 12 streams with top-5 logprobs

With ``--logprobs K`` the 12-stream measurement also runs with K logprobs per token, back to back
with the plain one on the same engine (order alternating), and the table gives the median of
the paired costs and the cost between the best run of each (a shared machine disturbs some
runs; the best ones are the least disturbed).

``vllm`` runs on the default model's HF directory; run it from .venv-vllm on a CPU
(scripts/setup-vllm-cpu.sh).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine, EngineError, GenerationRequest
from aimo_infer.config import Config, EngineConfig
from aimo_infer.solve.prompts import load_profile, render_prompt

PROBLEM_ID = "bench"
PROBLEM = (
    "Let $a$ and $b$ be positive integers with $a + b = 20$. "
    "What is the largest possible value of $ab$?"
)
PROFILE = "cot"  # no code cells: raw engine and solve loop do exactly the same decoding
# vLLM without a GPU: a 1 GiB KV cache (its CPU default reserves 92% of the RAM) and no
# torch.compile (minutes of C++ builds at start on a small CPU).
VLLM_CPU_OPTIONS = {"kv_cache_memory_bytes": 1 << 30, "enforce_eager": True}


@dataclass
class Workload:
    """One prompt, seeds and sampling shared by every measurement."""

    streams: int
    max_tokens: int
    config: Config = field(default_factory=Config)
    logprobs: int = 0  # top-k logprobs for the extra 12-stream measurement (0: none)

    def seeds(self) -> list[int]:
        if importlib.util.find_spec("aimo_infer.solve.controller") is None:
            return list(range(self.streams))
        from aimo_infer.solve.controller import stream_seed

        return [stream_seed(self.config.solve.run_seed, PROBLEM_ID, i) for i in range(self.streams)]

    def prompt(self, engine: Engine) -> str:
        messages = load_profile(PROFILE).messages(PROBLEM, self.config.solve.tir.max_code_calls)
        return render_prompt(messages, engine.info.tokenizer_path)

    def requests(
        self, engine: Engine, n: int, tag: str, logprobs: int = 0
    ) -> list[GenerationRequest]:
        s = self.config.solve.sampling
        prompt = self.prompt(engine)
        return [
            GenerationRequest(
                f"{tag}/{i}", prompt=prompt, seed=seed, temperature=s.temperature,
                top_p=s.top_p, top_k=s.top_k, min_p=s.min_p, max_tokens=self.max_tokens,
                logprobs=logprobs,
            )
            for i, seed in enumerate(self.seeds()[:n])
        ]  # fmt: skip


async def raw_tok_per_s(engine: Engine, requests: list[GenerationRequest]) -> float:
    """Tokens per wall-clock second for these requests run together straight on the engine."""

    async def drain(request: GenerationRequest) -> int:
        tokens = 0
        async for delta in engine.generate(request):
            tokens += delta.num_tokens
        return tokens

    started = time.perf_counter()
    total = sum(await asyncio.gather(*(drain(r) for r in requests)))
    return total / (time.perf_counter() - started)


# -- end-to-end column ----------------------------------------------------------------------------


async def solve_loop_tok_per_s(engine: Engine, workload: Workload) -> float | None:
    """Tokens per wall-clock second through the solve loop on the same workload.

    None when the solve loop (``aimo_infer.solve.controller``) is not available in this checkout.
    """
    if importlib.util.find_spec("aimo_infer.solve.controller") is None:
        return None
    from aimo_infer.solve.controller import Controller

    cfg = workload.config
    cfg.solve.prompt = PROFILE
    cfg.solve.num_streams = workload.streams
    cfg.solve.stop_policy = "all"
    cfg.solve.sampling.max_tokens = workload.max_tokens
    controller = Controller(engine, None, cfg)
    started = time.perf_counter()
    result = await controller.solve(PROBLEM_ID, PROBLEM)
    return result.total_tokens / (time.perf_counter() - started)


# -- driver ----------------------------------------------------------------------------------------


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    """``name`` or ``name:key=value:key=value`` (true/false and integers typed, else strings)."""
    name, *pairs = spec.split(":")
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"error: bad engine option {pair!r} in {spec!r}: use key=value")
        literals: dict[str, Any] = {"true": True, "false": False}
        options[key] = literals.get(raw, int(raw) if raw.lstrip("-").isdigit() else raw)
    return name, options


def engine_config(spec: str) -> EngineConfig:
    """The engine on the embedded default model (vLLM needs its HF directory named)."""
    name, options = parse_spec(spec)
    if name != "vllm" or importlib.util.find_spec("vllm") is None:
        return EngineConfig(name, None, options)  # create_engine says what is missing
    import torch

    from aimo_infer.models import prepare_default_model

    hf_dir = prepare_default_model(with_hf_weights=True, progress=False).hf_dir
    defaults = {} if torch.cuda.is_available() else VLLM_CPU_OPTIONS
    return EngineConfig(name, str(hf_dir), {**defaults, **options})


@dataclass
class Row:
    engine: str
    one: list[float] = field(default_factory=list)
    many: list[float] = field(default_factory=list)
    many_logprobs: list[float] = field(default_factory=list)
    solve: list[float] = field(default_factory=list)
    solve_note: str = ""
    error: str = ""


async def measure(name: str, make: Callable[[], Engine], workload: Workload, repeats: int) -> Row:
    row = Row(name)
    try:
        engine = make()
    except EngineError as exc:
        row.error = str(exc)
        return row
    try:
        await raw_tok_per_s(engine, workload.requests(engine, 1, "warmup"))  # load, caches
        for rep in range(repeats):
            row.one.append(await raw_tok_per_s(engine, workload.requests(engine, 1, f"one{rep}")))
            many = workload.requests(engine, workload.streams, f"many{rep}")
            lp = workload.requests(engine, workload.streams, f"lp{rep}", workload.logprobs)
            if workload.logprobs > 0 and rep % 2:  # pairs back to back, order alternating
                row.many_logprobs.append(await raw_tok_per_s(engine, lp))
            row.many.append(await raw_tok_per_s(engine, many))
            if workload.logprobs > 0 and not rep % 2:
                row.many_logprobs.append(await raw_tok_per_s(engine, lp))
            solve = await solve_loop_tok_per_s(engine, workload)
            if solve is None:
                row.solve_note = "n/a (controller not available)"
            else:
                row.solve.append(solve)
            print(f"  {name} repeat {rep + 1}/{repeats}: 1={row.one[-1]:.1f} "
                  f"{workload.streams}={row.many[-1]:.1f} solve={solve or 0:.1f} "
                  f"logprobs={row.many_logprobs[-1] if row.many_logprobs else 0:.1f} tok/s",
                  file=sys.stderr, flush=True)  # fmt: skip
    finally:
        await engine.shutdown()
    return row


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(rows: list[Row], streams: int, logprobs: int = 0) -> None:
    head = f"{'engine':<26} {'1 stream':>9} {f'{streams} streams':>11} {'x':>5} "
    extra = f" {f'+{logprobs} logprobs':>12} {'cost':>6} {'best-of':>8}" if logprobs else ""
    print(head + f"{'solve loop':>11} {'loop/raw':>8}{extra}   (tok/s, medians)")
    for row in rows:
        if row.error:
            print(f"{row.engine:<26} unavailable: {row.error}")
            continue
        one, many, solve = median(row.one), median(row.many), median(row.solve)
        ratio = many / one if one and many else None
        kept = solve / many if solve and many else None
        solve_cell = fmt(solve) if solve is not None else row.solve_note
        cells = ""
        if logprobs:
            with_lp = median(row.many_logprobs)
            # The median of the paired costs: a busy machine drifts between repeats.
            pairs = zip(row.many, row.many_logprobs, strict=False)
            cost = median([1.0 - b / a for a, b in pairs if a > 0])
            # Best of each: the least disturbed runs of a shared machine.
            best = 1.0 - max(row.many_logprobs) / max(row.many) if row.many_logprobs else None
            cells = f" {fmt(with_lp):>12} {fmt(cost, '.1%'):>6} {fmt(best, '.1%'):>8}"
        print(f"{row.engine:<26} {fmt(one):>9} {fmt(many):>11} {fmt(ratio, '.2f'):>5} "
              f"{solve_cell:>11} {fmt(kept, '.1%'):>8}{cells}")  # fmt: skip


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--engines",
        default="llamacpp",
        help="comma-separated engines, each NAME or NAME:key=value:... with engine options "
        "(e.g. llamacpp,llamacpp:weights=packaged)",
    )
    parser.add_argument("--max-tokens", type=int, default=128, help="tokens per stream")
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logprobs", type=int, default=0, metavar="K",
                        help="also run the streams with top-K logprobs and report the cost")
    args = parser.parse_args()
    if args.logprobs < 0:
        parser.error("--logprobs must be >= 0")
    workload = Workload(args.streams, args.max_tokens, logprobs=args.logprobs)
    rows = []
    for name in [n.strip() for n in args.engines.split(",") if n.strip()]:
        rows.append(await measure(name, lambda n=name: create_engine(engine_config(n)),
                                  workload, args.repeats))  # fmt: skip
    print_table(rows, args.streams, args.logprobs)
    default = next((r for r in rows if r.engine == "llamacpp"), None)
    value = median(default.many) if default is not None else None
    print(f"default_engine_12stream_tok_per_s={fmt(value)}")
    return 0 if value is not None else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
