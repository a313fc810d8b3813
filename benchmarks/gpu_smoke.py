"""End-to-end check of the TensorRT-LLM (1.2.x) or vLLM adapter on a GPU machine.

Loads an engine through the adapter, runs seeded streams on a few math prompts and checks what
the harness relies on: seeds give different streams (or the engine says they cannot: greedy
ReDrafter), stop strings end the text, a cancel frees one request while the others go on,
max_tokens is respected. Prints tok/s for one stream (the baseline) and for 12, measured in the
same run.

    python benchmarks/gpu_smoke.py /path/to/engine_dir --tokenizer /path/to/hf_dir
    python benchmarks/gpu_smoke.py /path/to/hf_checkpoint --engine trtllm --option backend=pytorch
    python benchmarks/gpu_smoke.py /path/to/hf_checkpoint --engine vllm --option max_model_len=8192
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_infer.backends import create_engine
from aimo_infer.backends.base import Engine, EngineError, GenerationRequest, StreamDelta, find_stop
from aimo_infer.config import EngineConfig
from aimo_infer.solve.prompts import plain_template, render_prompt

PROBLEMS = (
    "What is the remainder when 2^100 is divided by 7?",
    "How many positive divisors does 3600 have?",
    "Find the sum of all integers n with 1 <= n <= 100 such that n^2 + 1 is divisible by 5.",
)
SYSTEM = "Reason step by step and put the final answer in \\boxed{}."


@dataclass
class StreamResult:
    """One finished stream: its text, token count, finish reason and wall time."""

    text: str
    tokens: int
    finish_reason: str | None
    seconds: float


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def gpu_found() -> bool:
    """An NVIDIA GPU is visible (nvidia-smi lists one)."""
    if shutil.which("nvidia-smi") is None:
        return False
    try:
        done = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and "GPU" in done.stdout


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse (numbers, tables), else strings."""
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option needs key=value, got {pair!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def prompts_for(tokenizer_path: str | None) -> list[str]:
    """The problems in the model's chat template (plain ChatML if it has none)."""
    out = []
    for problem in PROBLEMS:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": problem}]
        try:
            out.append(render_prompt(messages, tokenizer_path))
        except Exception:
            out.append(plain_template(messages))
    return out


async def run_stream(engine: Engine, req: GenerationRequest, cancel_after: int = 0) -> StreamResult:
    """Drain one stream; with ``cancel_after`` > 0, cancel it after that many tokens."""
    start = time.perf_counter()
    parts: list[str] = []
    tokens = 0
    last: StreamDelta | None = None
    cancelled = False
    async for delta in engine.generate(req):
        parts.append(delta.text)
        tokens += delta.num_tokens
        last = delta
        if cancel_after and not cancelled and tokens >= cancel_after:
            cancelled = True
            await engine.cancel(req.request_id)
    reason = None if last is None else last.finish_reason
    return StreamResult("".join(parts), tokens, reason, time.perf_counter() - start)


def requests(prompts: list[str], n: int, tag: str, max_tokens: int, **kw: Any) -> list[GenerationRequest]:
    return [
        GenerationRequest(f"{tag}-{i}", prompt=prompts[i % len(prompts)], seed=i,
                          max_tokens=max_tokens, **kw)
        for i in range(n)
    ]


async def smoke(engine: Engine, streams: int, max_tokens: int) -> tuple[list[Check], list[tuple]]:
    """Run every phase; the checks and the throughput rows."""
    info = engine.info
    prompts = prompts_for(info.tokenizer_path)
    checks: list[Check] = []
    rows: list[tuple] = []

    await run_stream(engine, requests(prompts, 1, "warmup", 16)[0])

    start = time.perf_counter()
    single = await run_stream(engine, requests(prompts, 1, "one", max_tokens)[0])
    rows.append(("1 stream", 1, single.tokens, time.perf_counter() - start))

    batch = requests(prompts, streams, "many", max_tokens)
    start = time.perf_counter()
    results = await asyncio.gather(*(run_stream(engine, r) for r in batch))
    rows.append((f"{streams} seeded streams", streams, sum(r.tokens for r in results),
                 time.perf_counter() - start))

    per_prompt = [{results[i].text for i in range(p, streams, len(prompts))} for p in range(len(prompts))]
    distinct = min(len(texts) for texts in per_prompt)
    if info.extra.get("identical_seeds"):
        checks.append(Check("seeds", distinct == 1,
                            f"greedy ReDrafter: seeds identical as announced ({distinct} distinct)"))
    else:
        checks.append(Check("seeds", distinct > 1,
                            f"fewest distinct texts among same-prompt streams: {distinct}"))
    bad_finish = [r.finish_reason for r in results if r.finish_reason not in ("stop", "length")]
    checks.append(Check("finish", not bad_finish, f"unexpected finish reasons: {bad_finish}"))

    stops = (".", "\n")
    stopped = await asyncio.gather(*(run_stream(engine, r) for r in
                                     requests(prompts, 4, "stop", max_tokens, stop=stops)))
    stop_ok = all(
        (r.finish_reason == "length" and find_stop(r.text, stops) < 0)
        or (r.finish_reason == "stop" and find_stop(r.text, stops) == len(r.text))
        for r in stopped
    )
    checks.append(Check("stop strings", stop_ok,
                        "texts end at their first stop string: "
                        + ", ".join(repr(r.text[-12:]) for r in stopped)))

    cancel_batch = requests(prompts, 4, "cancel", max_tokens)
    outcome = await asyncio.gather(run_stream(engine, cancel_batch[0], cancel_after=4),
                                   *(run_stream(engine, r) for r in cancel_batch[1:]))
    others_ok = all(r.finish_reason in ("stop", "length") for r in outcome[1:])
    checks.append(Check("cancel", outcome[0].finish_reason == "cancelled" and others_ok
                        and engine.num_running() == 0,
                        f"cancelled stream: {outcome[0].finish_reason} after {outcome[0].tokens} "
                        f"tokens; others: {[r.finish_reason for r in outcome[1:]]}; "
                        f"running now: {engine.num_running()}"))

    short = await run_stream(engine, requests(prompts, 1, "short", 8)[0])
    checks.append(Check("max_tokens", short.tokens <= 8,
                        f"asked for 8, got {short.tokens} ({short.finish_reason})"))
    return checks, rows


def print_report(engine: Engine, checks: list[Check], rows: list[tuple]) -> bool:
    info = engine.info
    print(f"engine={info.name} model={info.model} context={info.context_length} "
          f"extra={ {k: v for k, v in info.extra.items() if k != 'options'} }")
    print(f"\n{'phase':<22}{'streams':>8}{'tokens':>9}{'seconds':>9}{'tok/s':>9}")
    for name, n, tokens, seconds in rows:
        print(f"{name:<22}{n:>8}{tokens:>9}{seconds:>9.2f}{tokens / seconds:>9.1f}")
    print()
    for check in checks:
        print(f"[{'ok' if check.ok else 'FAIL'}] {check.name}: {check.detail}")
    ok = all(c.ok for c in checks)
    rate = [tokens / seconds for _, _, tokens, seconds in rows]
    print(f"\ngpu_smoke ok={int(ok)} engine={info.name} tok_s_1={rate[0]:.1f} "
          f"tok_s_{rows[1][1]}={rate[1]:.1f} speedup={rate[1] / rate[0]:.2f}")
    return ok


async def main_async(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    engine = create_engine(EngineConfig(args.engine, args.model, options))
    try:
        checks, rows = await smoke(engine, args.streams, args.max_tokens)
    finally:
        await engine.shutdown()
    return 0 if print_report(engine, checks, rows) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="engine directory or Hugging Face checkpoint directory")
    parser.add_argument("--engine", choices=("trtllm", "vllm"), default="trtllm")
    parser.add_argument("--tokenizer", help="HF tokenizer directory (needed by engine directories)")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="adapter option, repeatable (e.g. max_seq_len=8192, backend=pytorch)")
    parser.add_argument("--streams", type=int, default=12)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--no-gpu-check", action="store_true",
                        help="skip the GPU check (CPU builds, dry runs)")
    args = parser.parse_args(argv)
    if not Path(args.model).exists():
        print(f"gpu_smoke: {args.model} does not exist", file=sys.stderr)
        return 2
    if not args.no_gpu_check and not gpu_found():
        print("gpu_smoke: no NVIDIA GPU found (nvidia-smi lists none); run this on a GPU "
              "machine, or pass --no-gpu-check for a CPU build", file=sys.stderr)
        return 2
    try:
        return asyncio.run(main_async(args))
    except (EngineError, ValueError) as exc:
        print(f"gpu_smoke: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # vLLM spawns its engine core: the guard is required
    sys.exit(main())
