"""The command line: a replayed solve end to end, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from aimo_infer.cli import main
from aimo_infer.solve.controller import stream_seed


def write_trace(path: Path, answers: list[int]) -> None:
    """A trace the replay engine can serve: one segment per stream of problem 'cli'."""
    with path.open("w") as fh:
        for i, answer in enumerate(answers):
            event = {"event": "segment", "problem_id": "cli", "stream": i,
                     "seed": stream_seed(0, "cli", i), "text": f"Done: \\boxed{{{answer}}}",
                     "tokens": 5, "finish_reason": "stop"}
            fh.write(json.dumps(event) + "\n")


def test_solve_replayed_prints_answer_and_votes(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [5, 5, 6, 5])
    out_trace = tmp_path / "out.jsonl"
    code = main(["solve", "What?", "--engine", "replay", "--model", str(trace), "--prompt", "cot",
                 "--streams", "4", "--policy", "all", "--trace", str(out_trace)])
    out = capsys.readouterr().out
    assert code == 0
    assert "answer: 5" in out
    assert "5 x3, 6 x1" in out
    events = [json.loads(line) for line in out_trace.read_text().splitlines()]
    assert events[-1]["event"] == "problem_end" and events[-1]["answer"] == 5


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["solve", "x", "--config", "/nonexistent.toml"], "config file not found"),
        (["solve", "x", "--engine", "nosuch"], "unknown engine 'nosuch'"),
        (["solve", "   ", "--engine", "replay"], "problem text is empty"),
        (["solve", "x", "--streams", "0"], "--streams must be >= 1"),
        (["solve", "x", "--policy", "agree=0", "--engine", "replay", "--model", "{trace}"],
         "bad stop policy"),
        (["solve", "x", "--engine", "replay", "--model", "/missing.jsonl"], "not found"),
        (["solve", "x", "--prompt", "nosuch", "--engine", "replay", "--model", "{trace}"],
         "unknown prompt profile"),
    ],
)
def test_bad_input_gives_one_line_error_and_nonzero_exit(
    tmp_path: Path, args: list[str], message: str
) -> None:
    trace = tmp_path / "t.jsonl"
    write_trace(trace, [1])
    args = [a.replace("{trace}", str(trace)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "aimo_infer", *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("aimo-infer: error:") and message in lines[0]


def test_bad_toml_names_the_key(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[solve]\nnum_stream = 3\n")
    proc = subprocess.run([sys.executable, "-m", "aimo_infer", "solve", "x", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "num_stream" in proc.stderr and "unknown key" in proc.stderr


def test_a_binary_problem_file_is_named(tmp_path: Path) -> None:
    binary = tmp_path / "problem.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe\x00")
    for arg, message in ((f"@{binary}", f"{binary}: not UTF-8 text"),
                         (f"@{tmp_path / 'missing.txt'}", f"{tmp_path / 'missing.txt'}: cannot "
                          "read the problem")):
        proc = subprocess.run([sys.executable, "-m", "aimo_infer", "solve", arg],
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0], proc.stderr


def test_a_problem_file_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    from aimo_infer.cli import read_problem_arg

    path = tmp_path / "p.txt"
    path.write_bytes("\ufeffWhat is 6 * 7?\n".encode())
    assert read_problem_arg(f"@{path}") == "What is 6 * 7?\n"
    assert read_problem_arg("What?") == "What?"


def test_a_bug_shows_its_traceback_and_a_user_error_one_line(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Only domain errors are reported in one line: a ValueError from a bug is not hidden."""
    import aimo_infer.evaluate.dryrun as dryrun
    from aimo_infer.errors import DataError

    def buggy(_: object) -> object:
        raise ValueError("a bug in the harness")

    monkeypatch.setattr(dryrun, "load_dataset", buggy)
    with pytest.raises(ValueError, match="a bug in the harness"):
        main(["dryrun", "comp-math", "--quiet"])

    def user(_: object) -> object:
        raise DataError("set.jsonl:3: not a JSON object")

    monkeypatch.setattr(dryrun, "load_dataset", user)
    assert main(["dryrun", "comp-math", "--quiet"]) == 1
    assert capsys.readouterr().err == "aimo-infer: error: set.jsonl:3: not a JSON object\n"
