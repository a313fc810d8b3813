"""submission.py: help, errors, the local gateway, and Kaggle's server (a stand-in package)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest

from aimo_infer.kaggle.gateway import read_problems
from aimo_infer.kaggle.serve import main
from aimo_infer.solve.controller import stream_seed

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "aimo_infer" / "data" / "aimo-reference.jsonl"

FAKE_SERVER = '''
import polars as pl


class {cls}:
    """Stand-in with the real server's surface: listeners by name, serve, run_local_gateway."""

    def __init__(self, *listeners):
        self.listeners = {{f.__name__: f for f in listeners}}

    def serve(self):
        row = self.listeners["predict"](pl.Series("id", ["r1"]), pl.Series("problem", ["1+1?"]))
        row.write_parquet("served.parquet")

    def run_local_gateway(self, data_paths=None):
        test = pl.read_csv(data_paths[0])
        rows = [self.listeners["predict"](*batch) for batch in test.iter_slices(n_rows=1)]
        pl.concat(rows).write_parquet("submission.parquet")
'''


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
    """A ``kaggle_evaluation`` package on sys.path, with both competitions' servers."""
    package = tmp_path / "pkgs" / "kaggle_evaluation"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    for module, cls in (("aimo_2_inference_server", "AIMO2InferenceServer"),
                        ("aimo_3_inference_server", "AIMO3InferenceServer")):
        (package / f"{module}.py").write_text(FAKE_SERVER.format(cls=cls))
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in [m for m in sys.modules if m.startswith("kaggle_evaluation")]:
        del sys.modules[name]


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
    assert sorted(written["id"]) == sorted(frame["id"])
    assert written["answer"].to_list() == frame["answer"].cast(pl.Int64).to_list()


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_a_competition_rerun_serves_kaggles_server(
    fake_kaggle: Path, monkeypatch: pytest.MonkeyPatch, profile: str
) -> None:
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    frame = read_problems(REFERENCE).head(1)
    args = replay_args(fake_kaggle, frame)
    args[args.index("--profile") + 1] = profile
    assert main(args) == 0
    served = pl.read_parquet(fake_kaggle / "served.parquet")
    assert served["id"].to_list() == ["r1"]
    assert served["answer"].dtype == pl.Int64  # no script for r1: the fallback answer, 0
    assert served["answer"].to_list() == [0]


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
