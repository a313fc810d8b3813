"""Answer extraction on hostile text: 30,000 tokens of unclosed ``\\boxed{`` against plain prose.

Both texts have the same length and are timed in the same run (median of several repeats, CPU
time of this process); extraction is linear, so the ratio stays near a small constant as the
size grows. The last line reads ``unclosed_over_plain=R``.
"""

from __future__ import annotations

import argparse
import statistics
import time

from aimo_infer.solve.answer import extract_answer

# One ``\boxed{`` is about three tokens in the Qwen/DeepSeek tokenizers; a prose token is about
# four characters. Both texts are cut to the same number of characters.
CHARS_PER_TOKEN = 4


def texts(tokens: int) -> dict[str, str]:
    size = tokens * CHARS_PER_TOKEN
    unclosed = ("\\boxed{" * (size // 7 + 1))[:size]
    prose = ("We compute $x^2 + 3x$, so the value is 12 and **not** 13. " * (size // 56 + 1))[:size]
    boxes = ("Try \\boxed{12} then {x} and \\boxed{\\frac{3}{4}} " * (size // 47 + 1))[:size]
    return {"plain prose": prose, "closed boxes": boxes, "unclosed boxes": unclosed}


def time_one(text: str, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.process_time()
        extract_answer(text)
        samples.append(time.process_time() - start)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    results = {name: time_one(text, args.repeats) for name, text in texts(args.tokens).items()}
    base = results["plain prose"]
    print(f"{'text (' + str(args.tokens) + ' tokens)':<28} {'chars':>8} {'ms':>8} {'x plain':>8}")
    for name, seconds in results.items():
        chars = args.tokens * CHARS_PER_TOKEN
        print(f"{name:<28} {chars:>8} {seconds * 1e3:>8.2f} {seconds / base:>8.2f}")
    print(f"unclosed_over_plain={results['unclosed boxes'] / base:.2f}")


if __name__ == "__main__":
    main()
