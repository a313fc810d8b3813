"""FP8 calibration set drawn from our own data, in the layout ``quantize.py --calib_dataset`` reads.

``quantize.py`` loads a local directory with ``datasets.load_dataset(DIR, split="train")`` and
uses its ``text`` column, so this writes ``DIR/train.jsonl`` with one ``{"text": ...}`` per line:
the chat-rendered prompt followed by a solution the target model wrote (drafter data), or the
prompt alone for rows that are bare problems.

    python -m engines.calibration --tokenizer MODEL_DIR --size 4096 --out DIR FILE.jsonl [...]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from aimo_infer.evaluate.datasets import read_jsonl
from aimo_infer.solve.prompts import load_profile, plain_template, render_prompt

CALIBRATION_FILE = "train.jsonl"


def read_rows(paths: Iterable[str | Path]) -> list[dict[str, object]]:
    """All JSON rows of the given JSONL files; a bad line names its file and line number."""
    rows: list[dict[str, object]] = []
    for path in paths:
        for number, row in read_jsonl(path):
            if "problem" not in row:
                raise ValueError(f"{path}:{number}: expected an object with a 'problem' field")
            rows.append(row)
    return rows


def calibration_texts(
    rows: Sequence[dict[str, object]], size: int, prompt: str, tokenizer: str | None, seed: int = 0
) -> list[str]:
    """Up to ``size`` texts, solutions first (they look like what the engine will process)."""
    profile = load_profile(prompt)
    solved = [r for r in rows if r.get("generated_solution")]
    bare = [r for r in rows if not r.get("generated_solution")]
    rng = random.Random(seed)
    rng.shuffle(solved)
    rng.shuffle(bare)
    texts = []
    for row in (solved + bare)[:size]:
        if row.get("generated_solution"):
            # drafter data already holds the user message as the model saw it
            messages = [{"role": "user", "content": str(row["problem"])}]
            system = row.get("system")
            if system:
                messages.insert(0, {"role": "system", "content": str(system)})
            texts.append(_render(messages, tokenizer) + str(row["generated_solution"]))
        else:
            texts.append(_render(profile.messages(str(row["problem"]), max_code_calls=6), tokenizer))
    return texts


def write_calibration(texts: Sequence[str], out: str | Path) -> Path:
    """Write ``out/train.jsonl``; returns its path."""
    directory = Path(out)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CALIBRATION_FILE
    tmp = path.with_suffix(".jsonl.partial")
    with tmp.open("w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def _render(messages: list[dict[str, str]], tokenizer: str | None) -> str:
    try:
        return render_prompt(messages, tokenizer)
    except ValueError:  # a tokenizer without a chat template
        return plain_template(messages)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engines.calibration", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", help="problem or drafter-data JSONL files")
    parser.add_argument("--out", required=True, help="output dataset directory")
    parser.add_argument("--size", type=int, default=4096, help="number of calibration texts")
    parser.add_argument("--tokenizer", default=None, help="HF directory whose chat template is used")
    parser.add_argument("--prompt", default="tir-toolcall", help="prompt profile for bare problems")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        missing = [f for f in args.files if not Path(f).is_file()]
        if missing:
            raise ValueError(f"input file not found: {missing[0]}")
        texts = calibration_texts(read_rows(args.files), args.size, args.prompt, args.tokenizer,
                                  args.seed)
        if not texts:
            raise ValueError("no rows in the input files")
        path = write_calibration(texts, args.out)
    except (OSError, ValueError) as exc:
        print(f"calibration: error: {exc}", file=sys.stderr)
        return 2
    short = f" (fewer than the {args.size} asked for)" if len(texts) < args.size else ""
    print(f"wrote {len(texts)} calibration texts{short} to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
