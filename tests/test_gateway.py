"""The local gateway: Kaggle's serving rules, the submission file, and scoring."""

from __future__ import annotations

import importlib.util
import json
import threading
from pathlib import Path

import polars as pl
import pytest

from aimo_infer.backends.base import GenerationRequest
from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.config import Config, ConfigError, load_config
from aimo_infer.evaluate.datasets import DatasetError
from aimo_infer.kaggle.gateway import (
    GatewayError,
    check_row,
    read_problems,
    run_gateway,
    shuffled,
)
from aimo_infer.kaggle.predict import Predictor

DATA = Path(__file__).resolve().parents[1] / "aimo_infer" / "data"
ROOT = Path(__file__).resolve().parents[1]


def reference_problems() -> pl.DataFrame:
    return read_problems(DATA / "aimo-reference.jsonl")


def echo_predict(id_: pl.Series, problem: pl.Series, answer: pl.Series | None = None) \
        -> pl.DataFrame:
    """Answers with the reference answer: a perfect solver for checking the plumbing."""
    value = int(answer[0]) % 100_000 if answer is not None else 0
    return pl.DataFrame({"id": id_, "answer": [value]})


def test_read_problems_from_jsonl_and_csv(tmp_path: Path) -> None:
    frame = reference_problems()
    assert frame.columns == ["id", "problem", "answer"] and frame.height == 30
    frame.write_csv(tmp_path / "test.csv")
    assert read_problems(tmp_path / "test.csv").equals(frame)
    frame.drop("answer").write_csv(tmp_path / "noanswer.csv")
    assert read_problems(tmp_path / "noanswer.csv").columns == ["id", "problem"]


@pytest.mark.parametrize(("content", "message"), [
    ("id,question\n1,x\n", "bad.csv:1: missing column 'problem'"),
    ("id,problem\n1,x\n 1 ,y\n", "duplicate id '1'"),  # ids are stripped, as in a dry run
    ("id,problem\n", "no problems"),
])
def test_bad_problem_files_get_one_clear_error(tmp_path: Path, content: str,
                                               message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message):
        read_problems(path)
    with pytest.raises(FileNotFoundError):
        read_problems(tmp_path / "absent.csv")


def test_shuffle_is_a_seeded_permutation() -> None:
    frame = reference_problems()
    once, again, other = shuffled(frame, 7), shuffled(frame, 7), shuffled(frame, 8)
    assert once.equals(again)
    assert sorted(once["id"]) == sorted(frame["id"])
    assert once["id"].to_list() != other["id"].to_list()


def test_a_run_serves_every_problem_once_in_shuffled_order(tmp_path: Path) -> None:
    frame = reference_problems()
    seen: list[tuple[str, ...]] = []

    def predict(id_: pl.Series, problem: pl.Series, answer: pl.Series) -> pl.DataFrame:
        seen.append((id_.name, problem.name, answer.name, str(len(id_))))
        return echo_predict(id_, problem, answer)

    out = tmp_path / "sub" / "submission.parquet"
    result = run_gateway(predict, frame, profile="aimo3", out=out, seed=3)
    assert set(seen) == {("id", "problem", "answer", "1")}  # one Series per column, one row
    written = pl.read_parquet(out)
    assert written["id"].to_list() == shuffled(frame, 3)["id"].to_list()
    assert written.schema == {"id": pl.String, "answer": pl.Int64}
    assert (result.correct, result.scored) == (30, 30)
    assert [p.name for p in out.parent.iterdir()] == ["submission.parquet"]  # no temp files


def test_scoring_counts_wrong_answers(tmp_path: Path) -> None:
    def off_by_one(id_: pl.Series, problem: pl.Series, answer: pl.Series) -> pl.DataFrame:
        return pl.DataFrame({"id": id_, "answer": [(int(answer[0]) + 1) % 1000]})

    frame = reference_problems().head(4)
    result = run_gateway(off_by_one, frame, profile="aimo2", out=tmp_path / "s.parquet", seed=0)
    assert (result.correct, result.scored) == (0, 4)
    assert "score 0/4" in result.summary()


@pytest.mark.parametrize(("row", "message"), [
    (None, "no prediction received"),
    (pl.DataFrame({"id": ["other"], "answer": [1]}), "id 'other' returned for problem 'p'"),
    (pl.DataFrame({"id": ["p", "p"], "answer": [1, 2]}), "expected 1 row, received 2"),
    (pl.DataFrame({"id": ["p"], "answer": ["12"]}), "answer must be an integer"),
    (pl.DataFrame({"id": ["p"], "answer": [None]}, schema={"id": pl.String, "answer": pl.Int64}),
     "answer must be an integer"),
    (pl.DataFrame({"id": ["p"], "answer": [1000]}), "answer 1000 out of range for aimo2"),
    (pl.DataFrame({"id": ["p"], "answer": [-1]}), "answer -1 out of range for aimo2"),
    (pl.DataFrame({"id": ["p"]}), "columns must be id, answer"),
    ("12", "predict returned str, not a DataFrame"),
])
def test_rows_kaggle_would_reject_are_rejected(row: object, message: str) -> None:
    """Each bad row is caught by its own check (Kaggle reports all as INVALID_SUBMISSION)."""
    with pytest.raises(GatewayError) as err:
        check_row(row, pl.Series("id", ["p"]), "aimo2")
    assert err.value.kind == "INVALID_SUBMISSION"
    assert message in str(err.value)


def test_a_valid_row_passes_the_check() -> None:
    row = check_row(pl.DataFrame({"id": ["p"], "answer": [999]}), pl.Series("id", ["p"]), "aimo2")
    assert row.to_dicts() == [{"id": "p", "answer": 999}]


def test_an_exception_from_predict_fails_the_run_and_writes_nothing(tmp_path: Path) -> None:
    def broken(*_: pl.Series) -> pl.DataFrame:
        raise RuntimeError("boom")

    out = tmp_path / "submission.parquet"
    with pytest.raises(GatewayError) as err:
        run_gateway(broken, reference_problems(), profile="aimo3", out=out, seed=0)
    assert err.value.kind == "SERVER_RAISED_EXCEPTION" and "boom" in str(err.value)
    assert not out.exists()


def test_only_calls_after_the_first_have_a_deadline(tmp_path: Path) -> None:
    never = threading.Event()
    calls: list[int] = []

    def slow_first_then_hang(id_: pl.Series, problem: pl.Series,
                             answer: pl.Series) -> pl.DataFrame:
        calls.append(1)
        never.wait(timeout=0.3 if len(calls) == 1 else None)  # the first call is slow
        return echo_predict(id_, problem, answer)

    with pytest.raises(GatewayError) as err:
        run_gateway(slow_first_then_hang, reference_problems().head(3), profile="aimo3",
                    out=tmp_path / "s.parquet", seed=0, call_timeout_s=0.05)
    assert err.value.kind == "TIMEOUT"
    assert len(calls) == 2  # the first call outlived the per-call deadline and was accepted
    never.set()


def test_a_slow_start_up_fails_like_kaggle(tmp_path: Path) -> None:
    with pytest.raises(GatewayError) as err:
        run_gateway(echo_predict, reference_problems(), profile="aimo3",
                    out=tmp_path / "s.parquet", startup_s=901.0)
    assert err.value.kind == "SERVER_NEVER_STARTED"
    with pytest.raises(ConfigError):
        run_gateway(echo_predict, reference_problems(), profile="free", out=tmp_path / "s")


def replay_answering_references(frame: pl.DataFrame) -> ReplayEngine:
    """A replay engine whose every stream boxes the reference answer of the problem it sees."""
    answers = dict(zip(frame["problem"], frame["answer"], strict=True))

    def script(request: GenerationRequest) -> list[str]:
        found = [a for p, a in answers.items() if p in (request.prompt or "")]
        return [f"So the answer is \\boxed{{{found[0]}}}." if found else "No idea."]

    return ReplayEngine({}, default=script)


def test_predictor_behind_the_gateway_scores_every_reference_problem(tmp_path: Path) -> None:
    frame = reference_problems()
    cfg = Config()
    cfg.solve.prompt = "cot"
    cfg.solve.num_streams = 3
    cfg.solve.profile = "aimo3"
    with Predictor(cfg, engine_factory=lambda _: replay_answering_references(frame),
                   num_problems=frame.height) as predictor:
        result = run_gateway(predictor.predict, frame, profile="aimo3",
                             out=tmp_path / "submission.parquet", seed=11)
    assert (result.correct, result.scored) == (30, 30)
    assert [c.outcome for c in predictor.calls] == ["answered"] * 30


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="needs llama-cpp")
def test_cpu_engine_end_to_end_on_reference_problems(tmp_path: Path) -> None:
    """The real CPU engine and sandbox behind the local gateway give a valid submission."""
    cfg = load_config(ROOT / "configs" / "cpu-default.toml")
    cfg.solve.num_streams = 2
    cfg.solve.sampling.max_tokens = 32
    cfg.budget.base_s, cfg.budget.max_extra_s, cfg.budget.min_per_problem_s = 15.0, 0.0, 5.0
    cfg.submission.trace = str(tmp_path / "trace.jsonl")
    frame = reference_problems().head(2)
    with Predictor(cfg, num_problems=2) as predictor:
        result = run_gateway(predictor.predict, frame, profile="aimo3",
                             out=tmp_path / "submission.parquet", seed=0)
    written = pl.read_parquet(tmp_path / "submission.parquet")
    assert sorted(written["id"]) == sorted(frame["id"])
    assert written["answer"].dtype == pl.Int64
    assert written["answer"].is_between(0, 99_999).all()
    assert result.scored == 2
    assert not any(c.overrun for c in predictor.calls)
    events = [json.loads(line) for line in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert sum(e["event"] == "predict" for e in events) == 2
    assert sum(e["event"] == "problem_start" for e in events) == 2  # both reached the engine
