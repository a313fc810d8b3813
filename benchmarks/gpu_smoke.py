"""End-to-end check of the TensorRT-LLM (1.2.x) or vLLM adapter on a GPU machine.

Loads an engine through the adapter, runs seeded streams on a few math prompts and checks what
the harness relies on, each reported PASS/FAIL with the engine and its version: the model's own
chat template renders (no silent ChatML: ``--chatml`` asks for it), seeds give different streams
(or the engine says they cannot and warned so: greedy ReDrafter, EAGLE-3 without advanced
sampling), one seed reproduces its stream where the engine says it does, a greedy request is
greedy, stop strings end the text (with ``end_id`` set on TensorRT-LLM, where that once broke
every stop string), a prompt past 8,192 tokens is served, a cancel frees one request while the
others go on, max_tokens is respected. Prints tok/s for one stream (the baseline) and for 12,
measured in the same run.

    python benchmarks/gpu_smoke.py /path/to/engine_dir --tokenizer /path/to/hf_dir
    python benchmarks/gpu_smoke.py /path/to/hf_checkpoint --engine trtllm --option backend=pytorch
    python benchmarks/gpu_smoke.py /path/to/hf_checkpoint --engine vllm --option max_model_len=16384
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
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
LONG_PROMPT_TOKENS = 9000  # past the PyTorch backend's default max_num_tokens (8192)


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


def prompts_for(tokenizer_path: str | None, chatml: bool) -> tuple[list[str], Check]:
    """The problems in the model's chat template, and the check that it rendered: a missing
    tokenizer or a broken template is a FAIL (then ChatML keeps the other checks running),
    never a silent ChatML prompt the model was not trained on. ``chatml`` asks for ChatML."""
    chats = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": p}]
             for p in PROBLEMS]
    if chatml:
        return [plain_template(m) for m in chats], Check("template", True, "ChatML, as asked")
    if tokenizer_path is None:
        return ([plain_template(m) for m in chats],
                Check("template", False, "the engine names no tokenizer: no chat template"))
    try:
        return ([render_prompt(m, tokenizer_path) for m in chats],
                Check("template", True, f"chat template of {tokenizer_path}"))
    except Exception as exc:
        return ([plain_template(m) for m in chats],
                Check("template", False, f"{tokenizer_path}: {type(exc).__name__}: {exc}"))


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


async def smoke(
    engine: Engine, streams: int, max_tokens: int, chatml: bool = False,
    warnings: list[str] | None = None, end_id: int | None = None,
) -> tuple[list[Check], list[tuple]]:
    """Run every phase; the checks and the throughput rows."""
    info = engine.info
    prompts, template = prompts_for(info.tokenizer_path, chatml)
    checks: list[Check] = [template]
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
    identical = bool(info.extra.get("identical_seeds"))
    if identical:
        checks.append(Check("seeds", distinct == 1,
                            f"identical seeds as announced ({distinct} distinct)"))
    else:
        checks.append(Check("seeds", distinct > 1,
                            f"fewest distinct texts among same-prompt streams: {distinct}"))
    warned = [w for w in warnings or [] if "same stream" in w]
    checks.append(Check("identical-seeds warning", bool(warned) == identical,
                        f"engine says identical_seeds={identical}; warnings: {warned or 'none'}"))

    twins = await asyncio.gather(*(run_stream(engine, r) for r in [
        GenerationRequest(f"twin-{i}", prompt=prompts[0], seed=7, max_tokens=max_tokens)
        for i in range(2)]))
    same = twins[0].text == twins[1].text
    reproducible = bool(info.extra.get("seeds_reproducible", True))
    checks.append(Check("same seed", same or not reproducible,
                        f"one seed twice gave {'the same' if same else 'different'} text; the "
                        f"engine says seeds_reproducible={reproducible}"))

    greedy = await asyncio.gather(*(run_stream(engine, r) for r in requests(
        [prompts[0]], 3, "greedy", max_tokens, temperature=0.0)))
    greedy_texts = {r.text for r in greedy}
    checks.append(Check("greedy", len(greedy_texts) == 1 and all(
        r.finish_reason in ("stop", "length") for r in greedy),
        f"temperature 0 with 3 seeds gave {len(greedy_texts)} distinct text(s)"))
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
    if info.name == "trtllm":
        checks.append(Check("stop strings with end_id", stop_ok and end_id is not None,
                            f"end_id={end_id} (pass --option end_id=N when the tokenizer "
                            "cannot tell)" if end_id is None else f"end_id={end_id}, as above"))

    long_prompt = prompts[0] + " word" * LONG_PROMPT_TOKENS  # each " word": one token or more
    if info.context_length <= LONG_PROMPT_TOKENS + 16:
        checks.append(Check("long prompt", False, f"context {info.context_length} is too short "
                            f"for a {LONG_PROMPT_TOKENS}-token prompt (raise max_seq_len)"))
    else:
        long = await run_stream(engine, GenerationRequest("long", prompt=long_prompt,
                                                          max_tokens=16))
        checks.append(Check("long prompt", long.finish_reason in ("stop", "length"),
                            f"a prompt of over {LONG_PROMPT_TOKENS} tokens finished "
                            f"{long.finish_reason} after {long.tokens} tokens"))

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
    version = info.extra.get("version", "unknown")
    print(f"engine={info.name} version={version} model={info.model} "
          f"context={info.context_length} "
          f"extra={ {k: v for k, v in info.extra.items() if k != 'options'} }")
    stats = getattr(engine, "stats", None)
    if callable(stats):
        print(f"stats={stats()}")
    print(f"\n{'phase':<22}{'streams':>8}{'tokens':>9}{'seconds':>9}{'tok/s':>9}")
    for name, n, tokens, seconds in rows:
        print(f"{name:<22}{n:>8}{tokens:>9}{seconds:>9.2f}{tokens / seconds:>9.1f}")
    print()
    for check in checks:
        print(f"[{'PASS' if check.ok else 'FAIL'}] {info.name} {version} {check.name}: "
              f"{check.detail}")
    ok = all(c.ok for c in checks)
    rate = [tokens / seconds for _, _, tokens, seconds in rows]
    print(f"\ngpu_smoke ok={int(ok)} engine={info.name} tok_s_1={rate[0]:.1f} "
          f"tok_s_{rows[1][1]}={rate[1]:.1f} speedup={rate[1] / rate[0]:.2f}")
    return ok


class _Warnings(logging.Handler):
    """Collects the adapters' warnings (the identical-seeds warning among them)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def tokenizer_end_id(tokenizer_path: str | None) -> int | None:
    """The tokenizer's end-of-sequence id (what end_id is set to), None when it cannot load."""
    if tokenizer_path is None:
        return None
    try:
        from transformers import AutoTokenizer

        eos = AutoTokenizer.from_pretrained(tokenizer_path).eos_token_id
    except Exception:
        return None
    return int(eos) if isinstance(eos, int) else None


async def main_async(args: argparse.Namespace) -> int:
    options = parse_options(args.option)
    if args.tokenizer:
        options["tokenizer"] = args.tokenizer
    if args.engine == "trtllm" and "end_id" not in options:
        # end_id set is the configuration that once broke every stop string: check it
        found = tokenizer_end_id(args.tokenizer or args.model)
        if found is not None:
            options["end_id"] = found
    handler = _Warnings()
    logging.getLogger("aimo_infer").addHandler(handler)
    try:
        engine = create_engine(EngineConfig(args.engine, args.model, options))
    finally:
        logging.getLogger("aimo_infer").removeHandler(handler)
    try:
        checks, rows = await smoke(engine, args.streams, args.max_tokens, args.chatml,
                                   handler.messages, options.get("end_id"))
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
    parser.add_argument("--chatml", action="store_true",
                        help="render prompts as ChatML instead of the model's chat template")
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
