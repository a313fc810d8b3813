"""Drafter data: rows in the layouts ReDrafter training reads, from records and from the harness."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from aimo_infer.backends.base import GenerationRequest
from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.config import Config
from engines.drafter import (
    NEMO_FILE,
    SHAREGPT_FILE,
    SUMMARY_FILE,
    DrafterDataWriter,
    generate,
    main,
    read_problems,
    samples_from_streams,
    training_command,
)

ROOT = Path(__file__).resolve().parents[1]
MESSAGES = [{"role": "system", "content": "Be careful."},
            {"role": "user", "content": "Solve: what is 2+3?"}]


@dataclass
class Record:
    """A plain stream record, as the solve loop reports it."""

    text: str
    seed: int
    answer: int | str | None
    finish_reason: str


def records() -> list[Record]:
    return [Record("2+3 = 5, so \\boxed{5}", 11, 5, "stop"),
            Record("Let me think... 2+3", 12, None, "length"),
            Record("", 13, None, "stop"),  # empty: dropped
            Record("partial", 14, None, "error")]  # failed: dropped


def check_nemo_row(row: dict[str, object]) -> None:
    """What NeMo-Skills' train_redrafter reads: problem and generated_solution strings; the
    other columns keep one type each so a dataset loader can infer them."""
    assert isinstance(row["problem"], str) and isinstance(row["generated_solution"], str)
    for key in ("expected_answer", "predicted_answer", "problem_id", "finish_reason", "system"):
        assert isinstance(row[key], str), key
    assert isinstance(row["seed"], int)


def check_sharegpt(conversations: list[dict[str, object]]) -> None:
    """What ml-recurrent-drafter's data code reads: human and gpt turns, alternating."""
    for item in conversations:
        turns = item["conversations"]
        assert isinstance(item["id"], str) and isinstance(turns, list)
        assert [t["from"] for t in turns] == ["human", "gpt"]
        assert all(isinstance(t["value"], str) and t["value"] for t in turns)


def test_samples_keep_solutions_and_drop_empty_or_failed() -> None:
    samples = samples_from_streams("p1", MESSAGES, records(), expected_answer="5")
    assert [s.seed for s in samples] == [11, 12]
    first = samples[0]
    assert first.problem == "Solve: what is 2+3?" and first.system == "Be careful."
    assert first.predicted_answer == "5" and first.expected_answer == "5"
    assert samples[1].predicted_answer == "" and samples[1].finish_reason == "length"


def test_solve_loop_streams_with_end_are_read_too() -> None:
    from aimo_infer.solve.stream import Stream

    stream = Stream(index=0, seed=7, text="so \\boxed{3}", end="cancelled", answer=3)
    (sample,) = samples_from_streams("p", MESSAGES, [stream])
    assert sample.finish_reason == "cancelled" and sample.predicted_answer == "3"


def test_writer_produces_valid_files(tmp_path: Path) -> None:
    writer = DrafterDataWriter(tmp_path / "data", {"n": 4})
    writer.add(samples_from_streams("p1", MESSAGES, records(), "5"))
    writer.add(samples_from_streams("p2", MESSAGES, records()[:1], None))
    writer.close()
    rows = [json.loads(line) for line in (tmp_path / "data" / NEMO_FILE).read_text().splitlines()]
    assert len(rows) == 3
    for row in rows:
        check_nemo_row(row)
    assert rows[0]["generated_solution"] == "2+3 = 5, so \\boxed{5}"
    sharegpt = json.loads((tmp_path / "data" / SHAREGPT_FILE).read_text())
    check_sharegpt(sharegpt)
    assert [c["id"] for c in sharegpt] == ["p1-11", "p1-12", "p2-11"]
    summary = json.loads((tmp_path / "data" / SUMMARY_FILE).read_text())
    assert summary["rows"] == 3 and summary["problems"] == 2
    assert summary["ends"] == {"stop": 2, "length": 1}


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="datasets not installed")
def test_rows_load_the_way_train_redrafter_loads_them(tmp_path: Path) -> None:
    import datasets

    writer = DrafterDataWriter(tmp_path)
    writer.add(samples_from_streams("p1", MESSAGES, records(), "5"))
    writer.close()
    # train_redrafter streams the split, takes dataset_nrows rows, then materialises them
    stream = datasets.load_dataset(str(tmp_path), split="train", streaming=True).take(100)
    ds = datasets.Dataset.from_generator(lambda: stream, features=stream.features)
    assert ds.num_rows == 2 and ds[0]["generated_solution"].endswith("\\boxed{5}")
    assert ds[1]["problem"] == "Solve: what is 2+3?"


def test_training_command_uses_the_published_settings(tmp_path: Path) -> None:
    argv = training_command(tmp_path, "/models/merged", rows=100)
    flags = dict(zip(argv[::2], argv[1::2], strict=False)) | dict(
        zip(argv[1::2], argv[2::2], strict=False))
    assert "nemo_skills.training.train_redrafter" in argv
    assert flags["--dataset"] == str(tmp_path) and flags["--dataset_split"] == "train"
    assert flags["--drafter_predict_n_tokens"] == "3" and flags["--drafter_num_layers"] == "2"
    assert flags["--learning_rate"] == "0.001" and flags["--rnn"] == "True"
    assert flags["--dataset_nrows"] == "100"


def test_read_problems_errors_name_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": "a", "problem": "x"}\n{"id": "b"}\n')
    with pytest.raises(ValueError, match=r"p\.jsonl:2: missing field 'problem'"):
        read_problems(bad)
    good = tmp_path / "q.jsonl"
    good.write_text('{"id": "a", "problem": "x"}\n{"id": "b", "problem": "y", "answer": 3}\n')
    assert [p["id"] for p in read_problems(good, limit=1)] == ["a"]
    assert read_problems(good)[1] == {"id": "b", "problem": "y", "answer": "3"}


def scripted(request: GenerationRequest) -> list[str]:
    """A different short solution per seed, so every stream gives its own row."""
    return [f"Seed {request.seed} thinks the answer is \\boxed{{{request.seed % 7}}}."]


class NoCodeRunner:
    """A sandbox stand-in: the scripted solutions contain no code, so it is never used."""

    async def open_session(self) -> object:
        raise AssertionError("no code was expected")

    async def close(self) -> None:
        return None


def test_generate_runs_the_harness_and_writes_every_stream(tmp_path: Path) -> None:
    from aimo_infer.solve.controller import Controller

    config = Config()
    config.solve.num_streams = 3
    config.solve.stop_policy = "all"
    problems = [{"id": f"q{i}", "problem": f"What is {i}+{i}?", "answer": str(2 * i)}
                for i in range(3)]
    controller = Controller(ReplayEngine({}, default=scripted), NoCodeRunner(), config)
    writer = DrafterDataWriter(tmp_path)
    with open(tmp_path / "log.txt", "w") as log:
        try:
            asyncio.run(generate(problems, controller, writer, log=log))
        finally:
            writer.close()
    rows = [json.loads(line) for line in (tmp_path / NEMO_FILE).read_text().splitlines()]
    assert len(rows) == 9 and len({(r["problem_id"], r["seed"]) for r in rows}) == 9
    for row in rows:
        check_nemo_row(row)
        assert row["generated_solution"].startswith(f"Seed {row['seed']} thinks")
        assert row["predicted_answer"] == str(row["seed"] % 7)
        assert f"What is {row['problem_id'][1]}+" in row["problem"]
        assert row["system"] == controller.profile.system
    check_sharegpt(json.loads((tmp_path / SHAREGPT_FILE).read_text()))


def test_cli_bad_input_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "engines.drafter", "generate", "--problems",
                           str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "none.jsonl" in proc.stderr


def test_command_subcommand_counts_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    writer = DrafterDataWriter(tmp_path)
    writer.add(samples_from_streams("p1", MESSAGES, records(), "5"))
    writer.close()
    assert main(["command", "--data", str(tmp_path), "--model", "/m", "--tokens", "4"]) == 0
    out = capsys.readouterr().out
    assert "--dataset_nrows 2" in out and "--drafter_predict_n_tokens 4" in out


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python (the default CPU engine) is not installed")
def test_end_to_end_on_the_cpu_engine(tmp_path: Path) -> None:
    problems = tmp_path / "problems.jsonl"
    problems.write_text("".join(json.dumps({"id": f"p{i}", "problem": f"Compute {i} + {i + 1}.",
                                            "answer": str(2 * i + 1)}) + "\n" for i in range(3)))
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "engines.drafter", "generate", "--problems",
                           str(problems), "--n", "2", "--out", str(out),
                           "--max-tokens", "48"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = [json.loads(line) for line in (out / NEMO_FILE).read_text().splitlines()]
    assert {r["problem_id"] for r in rows} == {"p0", "p1", "p2"}
    for row in rows:
        check_nemo_row(row)
    check_sharegpt(json.loads((out / SHAREGPT_FILE).read_text()))
    assert "nemo_skills.training.train_redrafter" in proc.stdout
