"""Kaggle's server contract, enforced by the strict ``kaggle_evaluation`` stand-in.

Every check below is one the real package makes (kaggle_evaluation 0.9.0 for AIMO-3, 0.3.0 for
AIMO-2); the stand-in (tests/standins/kaggle_evaluation) cites the real line of each, and the
comment on each test names it again. With ``KAGGLE_EVALUATION_DIR`` pointing at a real copy (and
grpcio installed) the last test runs the real gateway too.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import polars as pl
import pytest
from standins import standin_packages

from aimo_infer.kaggle import endpoint
from aimo_infer.kaggle.gateway import read_problems

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "aimo_infer" / "data" / "aimo-reference.jsonl"


@pytest.fixture
def kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The stand-in package, imported fresh (it reads the rerun flag at import, as the real
    one does: core/base_gateway.py:28); the working directory is a temporary one."""
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    monkeypatch.chdir(tmp_path)
    with standin_packages():
        yield importlib.import_module("kaggle_evaluation")


def server_module(profile: str) -> Any:
    return importlib.import_module(f"kaggle_evaluation.aimo_{profile[-1]}_inference_server")


def server_class(profile: str) -> Any:
    module = server_module(profile)
    return getattr(module, f"AIMO{profile[-1]}InferenceServer")


def problems_csv(tmp_path: Path, rows: int = 5, answers: bool = False) -> str:
    frame = read_problems(REFERENCE).head(rows)
    path = tmp_path / "test.csv"
    (frame if answers else frame.drop("answer")).write_csv(path)
    return str(path)


def error_of(excinfo: pytest.ExceptionInfo[BaseException]) -> str:
    return excinfo.value.error_type.name  # type: ignore[attr-defined]


class _Holder:
    def predict(self, *columns: pl.Series) -> pl.DataFrame:
        return pl.DataFrame({"id": columns[0], "answer": [0]})


# ----- core/relay.py define_server ---------------------------------------------------------


def test_a_bound_method_or_a_lambda_is_refused_as_by_the_real_server(kaggle: ModuleType) -> None:
    # core/relay.py:374-377 (0.9.0): FunctionType only, and a real name
    cls = server_class("aimo3")
    with pytest.raises(ValueError, match="must be functions, got <class 'method'>"):
        cls(_Holder().predict)
    with pytest.raises(ValueError, match="must be named"):
        cls(lambda *columns: 0)
    with pytest.raises(ValueError, match="at least one endpoint"):
        cls()  # core/relay.py:371-372
    cls(endpoint.predict)  # the project's endpoint: a plain function named predict


def test_the_endpoint_is_a_plain_function_named_predict() -> None:
    import types

    assert isinstance(endpoint.predict, types.FunctionType)
    assert endpoint.predict.__name__ == "predict"  # core/relay.py:328: the endpoint's name


def test_a_listener_under_another_name_is_a_missing_endpoint(
        kaggle: ModuleType, tmp_path: Path) -> None:
    # core/relay.py:347-348 and core/base_gateway.py:425-426
    def solve(*columns: pl.Series) -> pl.DataFrame:
        return pl.DataFrame({"id": columns[0], "answer": [0]})

    with pytest.raises(Exception) as err:
        server_class("aimo3")(solve).run_local_gateway((problems_csv(tmp_path),))
    assert error_of(err) == "SERVER_MISSING_ENDPOINT"


# ----- what predict receives and may return --------------------------------------------------


@pytest.mark.parametrize("profile", ["aimo2", "aimo3"])
def test_one_series_per_csv_column_is_passed_positionally(
        kaggle: ModuleType, tmp_path: Path, profile: str) -> None:
    # core/base_gateway.py:108 (self.predict(*data_batch)), aimo_3_gateway.py:31-32,
    # core/relay.py:162-166 and 218-219 (each Series crosses as a one-column parquet)
    seen: list[tuple[Any, ...]] = []

    def predict(*columns: Any, **named: Any) -> pl.DataFrame:
        seen.append((tuple((type(c).__name__, c.name, len(c)) for c in columns), named))
        return pl.DataFrame({"id": columns[0], "answer": [1]})

    server_class(profile)(predict).run_local_gateway((problems_csv(tmp_path, 3, answers=True),))
    assert seen == [((("Series", "id", 1), ("Series", "problem", 1), ("Series", "answer", 1)),
                     {})] * 3


def test_aimo3_checks_the_row_count_and_writes_the_ids_itself(
        kaggle: ModuleType, tmp_path: Path) -> None:
    # core/base_gateway.py:198-201 (row count), aimo_3_gateway.py:34-35 (no other check),
    # core/base_gateway.py:389-399 (the served ids overwrite the returned ones)
    def predict(*columns: pl.Series) -> pl.DataFrame:  # returns another id
        return pl.DataFrame({"id": ["not-the-id"], "answer": [7]})

    csv = problems_csv(tmp_path, 3)
    server_class("aimo3")(predict).run_local_gateway((csv,))
    written = pl.read_parquet("submission.parquet")
    assert sorted(written["id"]) == sorted(pl.read_csv(csv)["id"])
    assert written.columns == ["id", "answer"]

    def predict(*columns: pl.Series) -> pl.DataFrame:  # type: ignore[no-redef]  # two rows
        return pl.DataFrame({"id": [columns[0][0]] * 2, "answer": [1, 2]})

    with pytest.raises(Exception) as err:
        server_class("aimo3")(predict).run_local_gateway((csv,))
    assert error_of(err) == "INVALID_SUBMISSION" and "expected 1 rows but received 2" in str(
        err.value)


def test_aimo2_checks_the_id(kaggle: ModuleType, tmp_path: Path) -> None:
    # AIMO-2 0.3.0 core/base_gateway.py:69-79
    def predict(*columns: pl.Series) -> pl.DataFrame:  # returns another id
        return pl.DataFrame({"id": ["not-the-id"], "answer": [7]})

    with pytest.raises(Exception) as err:
        server_class("aimo2")(predict).run_local_gateway((problems_csv(tmp_path, 2),))
    assert error_of(err) == "INVALID_SUBMISSION" and "Invalid values for id" in str(err.value)


@pytest.mark.parametrize(("returned", "kind"), [
    (None, "INVALID_SUBMISSION"),  # core/base_gateway.py:169-170
    ([1], "INVALID_SUBMISSION"),  # core/base_gateway.py:181-184: not a DataFrame-like
    (3, "GATEWAY_RAISED_EXCEPTION"),  # an unnamed scalar: core/base_gateway.py:356-363
    (object(), "SERVER_RAISED_EXCEPTION"),  # cannot be serialised: core/relay.py:174
])
def test_what_kaggle_rejects(kaggle: ModuleType, tmp_path: Path, returned: object,
                             kind: str) -> None:
    def predict(*columns: pl.Series) -> object:
        return returned

    with pytest.raises(Exception) as err:
        server_class("aimo3")(predict).run_local_gateway((problems_csv(tmp_path, 2),))
    assert error_of(err) == kind


def test_an_exception_in_predict_fails_the_run(kaggle: ModuleType, tmp_path: Path) -> None:
    # core/base_gateway.py:427-431
    def predict(*columns: pl.Series) -> pl.DataFrame:
        raise RuntimeError("boom")

    with pytest.raises(Exception) as err:
        server_class("aimo3")(predict).run_local_gateway((problems_csv(tmp_path, 2),))
    assert error_of(err) == "SERVER_RAISED_EXCEPTION" and "boom" in str(err.value)


# ----- deadlines, start-up, order -------------------------------------------------------------


@pytest.mark.parametrize(("profile", "seconds"), [("aimo3", 9 * 3600), ("aimo2", 30 * 60)])
def test_per_call_deadlines(kaggle: ModuleType, profile: str, seconds: int) -> None:
    # aimo_3_gateway.py:16, AIMO-2 aimo_2_gateway.py:15, core/base_gateway.py:97-101
    module = importlib.import_module(f"kaggle_evaluation.aimo_{profile[-1]}_gateway")
    gateway = getattr(module, f"AIMO{profile[-1]}Gateway")(None)
    assert gateway.client.endpoint_deadline_seconds == seconds


def test_only_calls_after_the_first_have_a_deadline(kaggle: ModuleType, tmp_path: Path) -> None:
    # core/relay.py:255-257 (later calls: endpoint_deadline_seconds) and 273 (first: none)
    gateway_module = importlib.import_module("kaggle_evaluation.aimo_3_gateway")
    release = threading.Event()
    calls: list[int] = []

    def predict(*columns: pl.Series) -> pl.DataFrame:
        calls.append(1)
        if len(calls) == 1:
            release.wait(timeout=0.5)  # the first call outlives the per-call deadline
        else:
            release.wait()  # later calls hang until the test ends
        return pl.DataFrame({"id": columns[0], "answer": [0]})

    class ShortDeadline(gateway_module.AIMO3Gateway):  # type: ignore[misc,name-defined]
        def __init__(self, data_paths: Any) -> None:
            super().__init__(data_paths)
            self.set_response_timeout_seconds(0.1)

    server = server_class("aimo3")(predict)
    server._get_gateway_for_test = lambda paths, *a, **k: ShortDeadline(paths)
    try:
        with pytest.raises(Exception) as err:
            server.run_local_gateway((problems_csv(tmp_path, 3),))
        assert error_of(err) == "GRPC_DEADLINE_EXCEEDED"
        assert len(calls) == 2
    finally:
        release.set()


def test_use_private_set_means_no_shuffle(kaggle: ModuleType, tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # aimo_3_gateway.py:10 and 29-30
    module = importlib.import_module("kaggle_evaluation.aimo_3_gateway")
    csv = problems_csv(tmp_path, 30)
    order: list[str] = []

    def predict(*columns: pl.Series) -> pl.DataFrame:
        order.append(columns[0][0])
        return pl.DataFrame({"id": columns[0], "answer": [0]})

    monkeypatch.setattr(module, "USE_PRIVATE_SET", True)
    server_class("aimo3")(predict).run_local_gateway((csv,))
    assert order == pl.read_csv(csv)["id"].to_list()
    order.clear()
    monkeypatch.setattr(module, "USE_PRIVATE_SET", False)
    server_class("aimo3")(predict).run_local_gateway((csv,))
    assert sorted(order) == sorted(pl.read_csv(csv)["id"]) and \
        order != pl.read_csv(csv)["id"].to_list()  # 30 rows: 1/30! to come out unshuffled


def rerun_kaggle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_ago_s: float) -> None:
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    monkeypatch.setenv("KAGGLE_EVALUATION_STANDIN_TEST_CSV", problems_csv(tmp_path, 2))
    monkeypatch.setenv("KAGGLE_EVALUATION_STANDIN_STARTED_AT", str(time.time() - started_ago_s))


@pytest.mark.parametrize(("started_ago_s", "result"), [
    (60.0, {"Succeeded": True}),
    # core/relay.py:266-285 (the gateway waits 900 s for the server), base_gateway.py:423-424
    (901.0, {"Succeeded": False, "ErrorType": 1, "ErrorName": "SERVER_NEVER_STARTED",
             "ErrorDetails": None}),
])
def test_a_rerun_writes_result_json_and_needs_the_server_within_900s(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, started_ago_s: float,
        result: dict[str, Any]) -> None:
    # core/templates.py:128-131 (serve blocks in a rerun), core/base_gateway.py:147-148, 405-416
    rerun_kaggle(tmp_path, monkeypatch, started_ago_s)
    monkeypatch.chdir(tmp_path)
    with standin_packages():
        server = server_class("aimo3")(predict)
        server.serve()
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert (tmp_path / "submission.parquet").exists() == result["Succeeded"]


def predict(*columns: pl.Series) -> pl.DataFrame:
    return pl.DataFrame({"id": columns[0], "answer": [0]})


# ----- the real package, when a copy is at hand ----------------------------------------------


REAL_DIR = os.environ.get("KAGGLE_EVALUATION_DIR")


@pytest.mark.skipif(not REAL_DIR or not Path(REAL_DIR, "kaggle_evaluation").is_dir(),
                    reason="set KAGGLE_EVALUATION_DIR to a folder holding the real "
                    "kaggle_evaluation package (0.9.0) to run it")
def test_submission_against_the_real_kaggle_gateway(tmp_path: Path) -> None:
    """submission.py behind the real 0.9.0 local gateway (gRPC on loopback)."""
    from test_submission import replay_args

    frame = read_problems(REFERENCE).head(4)
    frame.write_csv(tmp_path / "test.csv")
    env = {k: v for k, v in os.environ.items() if k != "KAGGLE_IS_COMPETITION_RERUN"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(REAL_DIR),
                                         env.get("PYTHONPATH", "")])
    if importlib.util.find_spec("grpc") is None and "grpc" not in env["PYTHONPATH"]:
        pytest.skip("grpcio is not installed (add it to PYTHONPATH)")
    done = subprocess.run(
        [sys.executable, str(ROOT / "submission.py"), *replay_args(tmp_path, frame),
         "--csv", str(tmp_path / "test.csv"), "--gateway", "kaggle",
         "--out", str(tmp_path / "submission.parquet")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    written = pl.read_parquet(tmp_path / "submission.parquet")
    assert written.schema == {"id": pl.String, "answer": pl.Int64}
    assert dict(written.iter_rows()) == dict(zip(frame["id"], frame["answer"].cast(pl.Int64),
                                                 strict=True))


# ----- the endpoint never raises -------------------------------------------------------------


class _Broken:
    fallback = 5

    def predict(self, id_: object, problem: object, answer: object = None) -> pl.DataFrame:
        raise RuntimeError("predictor broke")


def test_the_endpoint_answers_the_fallback_when_broken_or_unbound() -> None:
    ids, problems = pl.Series("id", ["p1"]), pl.Series("problem", ["1+1?"])
    endpoint.bind(_Broken())
    try:
        row = endpoint.predict(ids, problems, pl.Series("answer", ["2"]), pl.Series("x", [1]))
        assert row.to_dicts() == [{"id": "p1", "answer": 5}]
        assert row.schema == {"id": pl.String, "answer": pl.Int64}
    finally:
        endpoint.unbind()
    # a call after the predictor is gone still answers the configured fallback
    assert endpoint.predict(ids, problems).to_dicts() == [{"id": "p1", "answer": 5}]
