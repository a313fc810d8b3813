"""Controller overhead: 12 replayed streams drained bare (baseline) and through the solve loop.

Prints wall-clock tokens/s, CPU microseconds per token and tokens per CPU-second (the throughput
of one core, which does not depend on what else the machine is doing) for both, measured in the
same run (medians of several repeats); the last line reads ``controller_tok_per_s=N``, tokens per
CPU-second through the controller.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

from aimo_infer.backends.base import GenerationRequest
from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.config import Config
from aimo_infer.solve.controller import Controller, stream_seed
from sandbox.api import ExecResult

PROBLEM_ID = "bench"


class NoCodeRunner:
    """The workload writes no code block; a call here would be a bug in the benchmark."""

    async def open_session(self) -> NoCodeRunner:
        raise AssertionError("the benchmark workload has no code blocks")

    async def run(self, code: str, timeout: float | None = None) -> ExecResult:
        raise AssertionError("unreachable")

    async def close(self) -> None:
        pass


def workload(streams: int, tokens: int) -> dict[int, list[ReplaySegment]]:
    # Realistic text: words, numbers, LaTeX and inline `code` (the watcher's trigger character).
    unit = "We compute $x^2 + 3x$ with `sympy`, so the value is 12. "
    text = (unit * (tokens // 10 + 1)) + "\\boxed{12}"
    return {stream_seed(0, PROBLEM_ID, i): [ReplaySegment(text, tokens)] for i in range(streams)}


async def drain_bare(engine: ReplayEngine, seeds: list[int], max_tokens: int) -> int:
    async def one(i: int, seed: int) -> int:
        request = GenerationRequest(f"bare/{i}", prompt=f"p{seed}", seed=seed,
                                    max_tokens=max_tokens)
        n = 0
        async for delta in engine.generate(request):
            n += delta.num_tokens
        return n

    return sum(await asyncio.gather(*(one(i, s) for i, s in enumerate(seeds))))


async def through_controller(engine: ReplayEngine, streams: int, max_tokens: int) -> int:
    cfg = Config()
    cfg.solve.num_streams = streams
    cfg.solve.stop_policy = "all"
    cfg.solve.sampling.max_tokens = max_tokens
    controller = Controller(engine, NoCodeRunner(), cfg)
    result = await controller.solve(PROBLEM_ID, "benchmark problem")
    assert result.answer == 12, result.vote
    return result.total_tokens


def measure(fn: object) -> tuple[int, float, float]:
    wall0, cpu0 = time.perf_counter(), time.process_time()
    tokens = asyncio.run(fn())  # type: ignore[operator]
    return tokens, time.perf_counter() - wall0, time.process_time() - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    scripts = workload(args.streams, args.tokens)
    seeds = list(scripts)
    max_tokens = args.tokens + 10
    rows: dict[str, list[tuple[int, float, float]]] = {"bare drain": [], "controller": []}
    for _ in range(args.repeats):
        rows["bare drain"].append(measure(
            lambda: drain_bare(ReplayEngine(scripts), seeds, max_tokens)))
        rows["controller"].append(measure(
            lambda: through_controller(ReplayEngine(scripts), args.streams, max_tokens)))
    print(f"{args.streams} streams x {args.tokens} tokens, median of {args.repeats} runs")
    print(f"{'path':<12} {'tokens':>9} {'wall tok/s':>11} {'cpu us/tok':>11} {'tok/cpu-s':>11}")
    summary = {}
    for name, samples in rows.items():
        tokens = samples[0][0]
        tok_s = statistics.median(t / w for t, w, _ in samples)
        us = statistics.median(c / t * 1e6 for t, _, c in samples)
        summary[name] = (tok_s, us)
        print(f"{name:<12} {tokens:>9} {tok_s:>11,.0f} {us:>11.2f} {1e6 / us:>11,.0f}")
    bare_us, ctl_us = summary["bare drain"][1], summary["controller"][1]
    print(f"controller overhead: {ctl_us - bare_us:.2f} us of CPU per token "
          f"({bare_us / ctl_us:.2f}x the bare drain's tokens per CPU-second)")
    print(f"controller_tok_per_s={1e6 / ctl_us:.0f}")


if __name__ == "__main__":
    main()
