"""How far past its deadline solve() returns, per engine fault (tests/fault_engines.py).

Each fault runs a few solves of ``--streams`` streams under a ``--deadline`` (seconds) and
reports the worst and median overrun against the cut grace; the baseline row is a well-behaved
engine in the same run. A hostile row streams 30,000 tokens of unclosed ``\\boxed{`` per
stream, so that answer extraction at the cut is part of the overrun. The last line reads
``worst_overrun_s=X``. Run from the repository root (it imports tests.fault_engines).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time
from collections.abc import Callable

from aimo_infer.backends.base import Engine
from aimo_infer.config import Config
from aimo_infer.solve.controller import Controller
from aimo_infer.solve.cutoff import cut_grace
from tests.fault_engines import (
    PARTIAL,
    CancelHangs,
    CancelRaises,
    FaultEngine,
    IgnoresCancel,
    SwallowsCancellation,
)

HOSTILE = PARTIAL + "\\boxed{" * 10_000  # about 30,000 tokens, no box closed after the first

FAULTS: dict[str, Callable[[], Engine]] = {
    "well-behaved (baseline)": FaultEngine,
    "cancel raises": CancelRaises,
    "cancel hangs": CancelHangs,
    "ignores cancel": IgnoresCancel,
    "swallows cancellation": SwallowsCancellation,
    "swallows, 30k-token unclosed boxes": lambda: SwallowsCancellation(head=HOSTILE),
}


async def overrun(make: Callable[[], Engine], streams: int, deadline_in: float) -> float:
    cfg = Config()
    cfg.solve.num_streams = streams
    cfg.solve.prompt = "cot"
    engine = make()
    controller = Controller(engine, None, cfg)
    deadline = time.monotonic() + deadline_in
    await controller.solve("bench", "What is 2+2?", deadline)
    late = time.monotonic() - deadline
    await engine.shutdown()
    return late


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=2.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # every abandoned stream logs a warning
    grace = cut_grace(args.deadline)
    print(f"deadline {args.deadline:.2f} s, {args.streams} streams, cut grace {grace:.3f} s")
    print(f"{'engine fault':<36} {'median s':>9} {'worst s':>9} {'worst - grace':>14}")
    worst = 0.0
    for name, make in FAULTS.items():
        samples = [asyncio.run(overrun(make, args.streams, args.deadline))
                   for _ in range(args.repeats)]
        worst = max(worst, max(samples))
        print(f"{name:<36} {statistics.median(samples):>9.3f} {max(samples):>9.3f} "
              f"{max(samples) - grace:>14.3f}")
    print(f"worst_overrun_s={worst:.3f}")


if __name__ == "__main__":
    main()
