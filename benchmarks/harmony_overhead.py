"""Harmony loop overhead: 8 replayed streams through the text TIR loop (baseline) and the harmony loop.

Both run the same content (about the same number of tokens per stream) through the real
Controller on the replay engine, no code calls. The harmony path adds per-delta detokenizing
with the o200k encoder and a StreamableParser pass per segment. Prints tokens per CPU-second
for both, medians of several repeats in the same run; the last line reads
``harmony_tok_per_s=N`` (tokens per CPU-second through the harmony loop).
"""

from __future__ import annotations

import argparse
import statistics

from controller_overhead import PROBLEM_ID, NoCodeRunner, measure  # this folder's benchmark

from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.config import Config
from aimo_infer.solve.controller import Controller, stream_seed

UNIT = "We compute $x^2 + 3x$ with sympy, so the value is 12. "


def text_workload(streams: int, tokens: int) -> dict[int, list[ReplaySegment]]:
    text = UNIT * (tokens // 16 + 1) + "\\boxed{12}"
    return {stream_seed(0, PROBLEM_ID, i): [ReplaySegment(text, tokens)] for i in range(streams)}


def harmony_workload(streams: int, tokens: int) -> tuple[dict[int, list[ReplaySegment]], int]:
    from openai_harmony import Message, Role

    from aimo_infer.solve.harmony import load_encoding

    encoding = load_encoding()
    body = encoding.encode(UNIT * (tokens // 16 + 1), allowed_special=set())[:tokens]
    text = encoding.decode(body)
    final = Message.from_role_and_content(Role.ASSISTANT, "\\boxed{12}").with_channel("final")
    analysis = Message.from_role_and_content(Role.ASSISTANT, text).with_channel("analysis")
    ids = [*encoding.render(analysis), *encoding.render(final)][2:]
    ids[-1] = encoding.encode("<|return|>", allowed_special="all")[0]
    scripts = {stream_seed(0, PROBLEM_ID, i): [ReplaySegment("", token_ids=tuple(ids))]
               for i in range(streams)}
    return scripts, len(ids)


async def solve(engine: ReplayEngine, prompt: str, streams: int, max_tokens: int) -> int:
    cfg = Config()
    cfg.solve.prompt = prompt
    cfg.solve.num_streams = streams
    cfg.solve.stop_policy = "all"
    cfg.solve.sampling.max_tokens = max_tokens
    controller = Controller(engine, NoCodeRunner(), cfg)  # type: ignore[arg-type]
    result = await controller.solve(PROBLEM_ID, "benchmark problem")
    assert result.answer == 12, result.vote
    return result.total_tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per stream")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    text_scripts = text_workload(args.streams, args.tokens)
    harmony_scripts, harmony_len = harmony_workload(args.streams, args.tokens)
    max_tokens = max(args.tokens, harmony_len) + 10
    rows: dict[str, list[tuple[int, float, float]]] = {"tir-fence": [], "harmony": []}
    for _ in range(args.repeats):
        rows["tir-fence"].append(measure(lambda: solve(
            ReplayEngine(text_scripts), "tir-fence", args.streams, max_tokens)))
        rows["harmony"].append(measure(lambda: solve(
            ReplayEngine(harmony_scripts), "harmony", args.streams, max_tokens)))
    print(f"{args.streams} streams x ~{args.tokens} tokens, median of {args.repeats} runs")
    print(f"{'loop':<10} {'tokens':>9} {'wall tok/s':>11} {'cpu us/tok':>11} {'tok/cpu-s':>11}")
    summary = {}
    for name, samples in rows.items():
        tok_s = statistics.median(t / w for t, w, _ in samples)
        us = statistics.median(c / t * 1e6 for t, _, c in samples)
        summary[name] = us
        print(f"{name:<10} {samples[0][0]:>9} {tok_s:>11,.0f} {us:>11.2f} {1e6 / us:>11,.0f}")
    print(f"harmony overhead: {summary['harmony'] - summary['tir-fence']:+.2f} us of CPU per "
          "token against the text loop")
    print(f"harmony_tok_per_s={1e6 / summary['harmony']:.0f}")


if __name__ == "__main__":
    main()
