"""submission.py: help, errors, the local gateway, and Kaggle's server (a stand-in package)."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from standins import standin_packages

from aimo_infer.kaggle.gateway import read_problems
from aimo_infer.kaggle.serve import main
from aimo_infer.solve.controller import stream_seed

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "aimo_infer" / "data" / "aimo-reference.jsonl"



def replay_trace(path: Path, frame: pl.DataFrame, streams: int) -> Path:
    """A trace the replay engine plays back: every stream boxes its problem's answer."""
    with path.open("w") as fh:
        for pid, answer in frame.select("id", "answer").iter_rows():
            for i in range(streams):
                fh.write(json.dumps({"event": "segment", "problem_id": pid,
                                     "seed": stream_seed(0, pid, i),
                                     "text": f"Thus \\boxed{{{answer}}}.",
                                     "finish_reason": "stop"}) + "\n")
    return path


def replay_args(tmp_path: Path, frame: pl.DataFrame) -> list[str]:
    trace = replay_trace(tmp_path / "replay.jsonl", frame, 2)
    return ["--engine", "replay", "--model", str(trace), "--prompt", "cot", "--streams", "2",
            "--profile", "aimo3"]


@pytest.fixture
def fake_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The strict ``kaggle_evaluation`` stand-in (tests/standins/kaggle_evaluation) on sys.path:
    the checks of the real 0.9.0 package, in-process; the working directory is ``tmp_path``."""
    monkeypatch.chdir(tmp_path)
    with standin_packages():
        yield tmp_path


def test_help_explains_the_entry_point() -> None:
    done = subprocess.run([sys.executable, "submission.py", "--help"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    for text in ("KAGGLE_IS_COMPETITION_RERUN", "--csv", "--out", "--profile", "--config",
                 "submission.parquet"):
        assert text in done.stdout


@pytest.mark.parametrize(("argv", "code", "message"), [
    (["--profile", "free", "--csv", str(REFERENCE)], 2, "invalid choice: 'free'"),  # not offered
    (["--csv", "no/such/file.csv"], 1, "not found"),
    ([], 2, "pass --csv"),
    (["--config", "no/such.toml", "--csv", str(REFERENCE)], 2, "config file not found"),
])
def test_bad_input_gets_one_line_and_a_nonzero_exit(
    argv: list[str], code: int, message: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    try:
        returned = main([*argv, "--gateway", "local"])
    except SystemExit as exit_:  # refused by the argument parser itself
        returned = exit_.code  # type: ignore[assignment]
    assert returned == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("submission") and ": error:" in err[-1] and message in err[-1]


def test_local_gateway_run_writes_a_scored_submission(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    frame = read_problems(REFERENCE).head(5)
    frame.write_csv(tmp_path / "test.csv")
    out = tmp_path / "out" / "submission.parquet"
    code = main([*replay_args(tmp_path, frame), "--csv", str(tmp_path / "test.csv"),
                 "--out", str(out), "--gateway", "local", "--shuffle-seed", "4"])
    assert code == 0
    written = pl.read_parquet(out)
    expected = dict(zip(frame["id"], frame["answer"].cast(pl.Int64), strict=True))
    assert dict(written.iter_rows()) == expected
    assert "score 5/5" in capsys.readouterr().out


def test_kaggle_gateway_is_used_when_the_package_is_importable(
    fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    frame = read_problems(REFERENCE).head(3)
    frame.write_ndjson(fake_kaggle / "problems.jsonl")  # converted to CSV for Kaggle's gateway
    out = fake_kaggle / "result.parquet"
    code = main([*replay_args(fake_kaggle, frame), "--csv", str(fake_kaggle / "problems.jsonl"),
                 "--out", str(out)])
    assert code == 0
    written = pl.read_parquet(out)
    assert written.columns == ["id", "answer"]
    assert dict(written.iter_rows()) == dict(zip(frame["id"], frame["answer"].cast(pl.Int64),
                                                 strict=True))


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_a_competition_rerun_serves_kaggles_server(
    fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    """In a rerun the server blocks while Kaggle's gateway (here the stand-in's) serves the
    hidden test.csv; the gateway writes result.json and submission.parquet."""
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    frame = read_problems(REFERENCE).head(3)
    frame.drop("answer").write_csv(fake_kaggle / "hidden.csv")
    monkeypatch.setenv("KAGGLE_EVALUATION_STANDIN_TEST_CSV", str(fake_kaggle / "hidden.csv"))
    args = replay_args(fake_kaggle, frame.head(2))  # no script for the third: the fallback
    args[args.index("--profile") + 1] = profile
    assert main(args) == 0
    assert json.loads((fake_kaggle / "result.json").read_text()) == {"Succeeded": True}
    served = pl.read_parquet(fake_kaggle / "submission.parquet")
    assert served.schema == {"id": pl.String, "answer": pl.Int64}
    expected = dict(zip(frame["id"], frame["answer"].cast(pl.Int64), strict=True))
    expected[frame["id"][2]] = 0
    assert dict(served.iter_rows()) == expected


def test_startup_is_counted_from_the_notebook_or_the_entry_point(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import time

    from aimo_infer.kaggle.serve import STARTED_AT_ENV, elapsed_before_s

    monkeypatch.delenv(STARTED_AT_ENV, raising=False)
    # Not the process start: a long-lived caller (this test process) must not count.
    assert 9.0 <= elapsed_before_s(time.time() - 10.0) < 60.0
    monkeypatch.setenv(STARTED_AT_ENV, str(time.time() - 300.0))
    assert 299.0 <= elapsed_before_s(time.time()) < 360.0


def rerun_with(fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch, rows: int) -> pl.DataFrame:
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    frame = read_problems(REFERENCE).head(rows)
    frame.drop("answer").write_csv(fake_kaggle / "hidden.csv")
    monkeypatch.setenv("KAGGLE_EVALUATION_STANDIN_TEST_CSV", str(fake_kaggle / "hidden.csv"))
    return frame


def test_the_server_starts_before_the_engine_has_loaded(
    fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with load = eager, the engine loads in the background after the server is up
    (kaggle_evaluation core/relay.py:266-285: the gateway waits 900 s for the server only)."""
    import importlib

    from aimo_infer.backends import create_engine
    from aimo_infer.kaggle import predict as predict_module

    frame = rerun_with(fake_kaggle, monkeypatch, 2)
    relay = importlib.import_module("kaggle_evaluation.core.relay")
    server_up = threading.Event()
    real_start = relay.Server.start

    def start(self: object) -> None:
        real_start(self)
        server_up.set()

    seen: list[bool] = []

    def engine_factory(config: object) -> object:
        seen.append(server_up.wait(timeout=30))  # an eager load would wait here in vain
        return create_engine(config)  # type: ignore[arg-type]

    monkeypatch.setattr(relay.Server, "start", start)
    monkeypatch.setattr(predict_module, "Predictor", functools.partial(
        predict_module.Predictor, engine_factory=engine_factory))
    assert main([*replay_args(fake_kaggle, frame), "--load", "eager"]) == 0
    assert seen == [True]
    assert json.loads((fake_kaggle / "result.json").read_text()) == {"Succeeded": True}
    served = pl.read_parquet(fake_kaggle / "submission.parquet")
    assert dict(served.iter_rows()) == dict(zip(frame["id"], frame["answer"].cast(pl.Int64),
                                                strict=True))


@pytest.mark.parametrize("bad", [["--config", "no/such.toml"], ["--streams", "0"],
                                 ["--model", "no/such/trace.jsonl"]])
def test_a_rerun_never_exits_nonzero_and_answers_every_problem(
    fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch, bad: list[str]
) -> None:
    """A broken config or engine in the rerun still gives a scored submission (fallbacks)."""
    frame = rerun_with(fake_kaggle, monkeypatch, 3)
    args = [*replay_args(fake_kaggle, frame), "--validate"]  # the notebook passes it always
    for flag, value in zip(bad[::2], bad[1::2], strict=True):
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    assert main(args) == 0
    assert json.loads((fake_kaggle / "result.json").read_text()) == {"Succeeded": True}
    served = pl.read_parquet(fake_kaggle / "submission.parquet")
    assert sorted(served["id"]) == sorted(frame["id"]) and served["answer"].to_list() == [0] * 3


def test_validate_passes_when_the_engine_answers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    frame = read_problems(REFERENCE)  # --validate without --csv: the reference problems
    code = main([*replay_args(tmp_path, frame), "--validate", "--gateway", "local",
                 "--out", str(tmp_path / "submission.parquet")])
    assert code == 0
    assert "validate: passed (30/30" in capsys.readouterr().out


@pytest.mark.parametrize(("model", "message"), [
    ("no/such/trace.jsonl", "the engine never became ready"),
    (None, "every one of 3 answers was the fallback"),
])
def test_validate_fails_a_save_run_that_would_score_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    model: str | None, message: str
) -> None:
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    frame = read_problems(REFERENCE).head(3)
    frame.write_csv(tmp_path / "test.csv")
    args = replay_args(tmp_path, frame.head(0))  # a trace with no script: no answers
    if model is not None:
        args[args.index("--model") + 1] = model
    code = main([*args, "--validate", "--gateway", "local", "--csv", str(tmp_path / "test.csv"),
                 "--out", str(tmp_path / "submission.parquet")])
    assert code == 1
    assert message in capsys.readouterr().err
    assert pl.read_parquet(tmp_path / "submission.parquet")["answer"].to_list() == [0] * 3
