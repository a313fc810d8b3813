"""Per-call latency and throughput of the sandbox against a fresh ``python -c`` per call.

Measures a trivial and a sympy snippet, one caller and 12 concurrent callers, with every
protection the kernel allows switched on. Single-caller rows come twice: back to back, and with
a pause between calls like the model generating (then the snapshot fork happens in the pause).

    .venv/bin/python benchmarks/sandbox_latency.py [--calls 200] [--seconds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sandbox import SandboxPool, SandboxSession

SNIPPETS = {
    "trivial": "print(1 + 1)",
    "sympy": "import sympy as sp\nx = sp.symbols('x')\nprint(sp.factor(x**4 - 1), "
             "sp.isprime(2**61 - 1))",
}
CALLERS = 12


@dataclass
class Row:
    method: str
    snippet: str
    callers: str
    samples: list[float]  # seconds per call
    calls_per_s: float

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.samples) * 1e3

    @property
    def p95_ms(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1e3


async def timed(call: Callable[[], Awaitable[None]], count: int, gap_s: float) -> list[float]:
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        await call()
        samples.append(time.perf_counter() - start)
        if gap_s:
            await asyncio.sleep(gap_s)
    return samples


async def concurrent(calls: list[Callable[[], Awaitable[None]]],
                     seconds: float) -> tuple[list[float], float]:
    samples: list[float] = []
    stop = time.perf_counter() + seconds

    async def loop(call: Callable[[], Awaitable[None]]) -> None:
        while time.perf_counter() < stop:
            start = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(loop(call) for call in calls))
    return samples, len(samples) / (time.perf_counter() - began)


def sandbox_call(session: SandboxSession, code: str) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        result = await session.run(code)
        if result.status != "ok":
            raise RuntimeError(f"sandbox call failed: {result}")

    return call


def subprocess_call(code: str) -> Callable[[], Awaitable[None]]:
    async def call() -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        await proc.communicate()
        if proc.returncode != 0:
            raise RuntimeError("baseline subprocess failed")

    return call


async def measure(args: argparse.Namespace) -> list[Row]:
    rows: list[Row] = []
    async with SandboxPool() as pool:
        sessions = [await pool.open_session() for _ in range(CALLERS)]
        print("protections:", sessions[0].protections, file=sys.stderr)
        for name, code in SNIPPETS.items():
            await sessions[0].run(code)  # warm the path once
            for label, gap in (("1, back to back", 0.0), ("1, 50 ms gaps", 0.05)):
                samples = await timed(sandbox_call(sessions[0], code), args.calls, gap)
                rows.append(Row("sandbox", name, label, samples, 1 / statistics.mean(samples)))
            samples, rate = await concurrent([sandbox_call(s, code) for s in sessions],
                                             args.seconds)
            rows.append(Row("sandbox", name, f"{CALLERS}, back to back", samples, rate))
        for session in sessions:
            await session.close()
    for name, code in SNIPPETS.items():
        samples = await timed(subprocess_call(code), args.baseline_calls, 0.0)
        rows.append(Row("fresh subprocess", name, "1, back to back", samples,
                        1 / statistics.mean(samples)))
        samples, rate = await concurrent([subprocess_call(code)] * CALLERS, args.seconds)
        rows.append(Row("fresh subprocess", name, f"{CALLERS}, back to back", samples, rate))
    return rows


def report(rows: list[Row]) -> float:
    print(f"{'method':<17} {'snippet':<8} {'callers':<17} {'p50 ms':>9} {'p95 ms':>9} "
          f"{'calls/s':>9} {'n':>6}")
    for row in rows:
        print(f"{row.method:<17} {row.snippet:<8} {row.callers:<17} {row.p50_ms:>9.2f} "
              f"{row.p95_ms:>9.2f} {row.calls_per_s:>9.1f} {len(row.samples):>6}")

    def find(method: str, snippet: str, callers: str) -> Row:
        return next(r for r in rows if (r.method, r.snippet, r.callers) == (method, snippet,
                                                                           callers))

    for snippet in SNIPPETS:
        fast = find("sandbox", snippet, "1, back to back")
        slow = find("fresh subprocess", snippet, "1, back to back")
        print(f"{snippet}: sandbox is {slow.p50_ms / fast.p50_ms:.0f}x faster than a fresh "
              f"subprocess (p50, one caller)")
    return find("sandbox", "trivial", "1, back to back").p50_ms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="calls per single-caller row")
    parser.add_argument("--seconds", type=float, default=5.0, help="length of concurrent rows")
    parser.add_argument("--baseline-calls", type=int, default=10)
    args = parser.parse_args()
    if args.calls < 1 or args.seconds <= 0 or args.baseline_calls < 1:
        parser.error("--calls, --seconds and --baseline-calls must be positive")
    trivial_p50 = report(asyncio.run(measure(args)))
    print(f"sandbox_trivial_p50_ms={trivial_p50:.3f}")


if __name__ == "__main__":
    main()
