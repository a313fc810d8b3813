"""A local gateway that serves problems as Kaggle's AIMO gateway does, and the real one's loader.

Kaggle's gateway reads ``test.csv``, shuffles it, calls ``predict`` once per problem with one
polars Series per column (``answer`` too when the file has it), checks that one row came back
(AIMO-2 also checks its id; AIMO-3 writes the served id itself), and writes
``submission.parquet``. The local gateway checks the id and the answer range as well. The server must answer within 15
minutes of start-up; the first call has no deadline, later ones 30 min (AIMO-2) or 9 h (AIMO-3).
``run_gateway`` does the same in-process, for runs without the ``kaggle_evaluation`` package,
and also scores the run when the answers are known.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from aimo_infer.config import ConfigError
from aimo_infer.errors import MissingFile
from aimo_infer.solve.ranges import ANSWER_LIMITS, in_range

STARTUP_LIMIT_S = 15 * 60.0
CALL_LIMITS_S = {"aimo2": 30 * 60.0, "aimo3": 9 * 3600.0}
COMPETITION_DIRS = {
    "aimo2": "/kaggle/input/ai-mathematical-olympiad-progress-prize-2",
    "aimo3": "/kaggle/input/ai-mathematical-olympiad-progress-prize-3",
}
SERVER_CLASSES = {
    "aimo2": ("kaggle_evaluation.aimo_2_inference_server", "AIMO2InferenceServer"),
    "aimo3": ("kaggle_evaluation.aimo_3_inference_server", "AIMO3InferenceServer"),
}

Predict = Callable[..., Any]


class GatewayError(RuntimeError):
    """The submission would fail on Kaggle; ``kind`` names Kaggle's error type."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind


@dataclass
class GatewayResult:
    """What a local gateway run produced."""

    submission: pl.DataFrame  # id, answer in serving order
    path: Path
    seed: int
    call_s: list[float] = field(default_factory=list)
    correct: int | None = None  # None when the answers are unknown
    scored: int = 0

    def summary(self) -> str:
        score = "answers unknown" if self.correct is None else \
            f"score {self.correct}/{self.scored}"
        total = sum(self.call_s)
        return (f"{self.submission.height} problems served (seed {self.seed}) in {total:.1f}s; "
                f"{score}; wrote {self.path}")


def read_problems(path: str | Path) -> pl.DataFrame:
    """Problems from a CSV (Kaggle's layout) or JSONL file: ``id``, ``problem`` [, ``answer``].

    Read by the dry run's reader (``datasets.load_dataset``: the same checks and messages, ids
    stripped), so a dry run and the local gateway serve the same rows; every column is text.
    """
    from aimo_infer.evaluate.datasets import load_dataset

    p = Path(path)
    if not p.is_file():
        raise MissingFile(f"problem file not found: {p}")
    problems = load_dataset(str(p)).problems
    columns = {"id": [q.id for q in problems], "problem": [q.problem for q in problems]}
    if any(q.answer is not None for q in problems):
        columns["answer"] = [q.answer for q in problems]  # type: ignore[misc]
    return pl.DataFrame(columns, schema={k: pl.String for k in columns})


def shuffled(problems: pl.DataFrame, seed: int) -> pl.DataFrame:
    """The serving order: a seeded shuffle of every row, as the public Kaggle gateway does."""
    return problems.sample(fraction=1.0, shuffle=True, with_replacement=False, seed=seed)


def check_row(row: object, served_id: pl.Series, profile: str) -> pl.DataFrame:
    """The row ``predict`` returned, if Kaggle would accept it; else ``GatewayError``."""
    if row is None:
        raise GatewayError("INVALID_SUBMISSION", "no prediction received")
    if not isinstance(row, pl.DataFrame):
        try:
            row = pl.from_pandas(row)  # type: ignore[arg-type]
        except Exception:
            raise GatewayError("INVALID_SUBMISSION",
                               f"predict returned {type(row).__name__}, not a DataFrame") from None
    if row.height != 1:
        raise GatewayError("INVALID_SUBMISSION", f"expected 1 row, received {row.height}")
    if "id" not in row.columns or "answer" not in row.columns:
        raise GatewayError("INVALID_SUBMISSION", f"columns must be id, answer; got {row.columns}")
    try:
        same_id = row["id"].equals(served_id)
    except Exception:
        same_id = False
    if not same_id:
        raise GatewayError("INVALID_SUBMISSION",
                           f"id {row['id'][0]!r} returned for problem {served_id[0]!r}")
    answer = row["answer"]
    if not answer.dtype.is_integer() or answer.null_count():
        raise GatewayError("INVALID_SUBMISSION", f"answer must be an integer, got {answer[0]!r}")
    if not in_range(answer[0], profile):
        raise GatewayError("INVALID_SUBMISSION", f"answer {answer[0]} out of range for {profile}")
    return row.select("id", pl.col("answer").cast(pl.Int64))


def call_with_deadline(predict: Predict, args: tuple[pl.Series, ...],
                       timeout_s: float | None) -> object:
    """Call ``predict`` in a daemon thread and wait at most ``timeout_s`` (None: forever)."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["row"] = predict(*args)
        except BaseException as exc:
            outcome["error"] = exc

    worker = threading.Thread(target=target, name="gateway-call", daemon=True)
    worker.start()
    worker.join(timeout_s)
    if worker.is_alive():
        raise GatewayError("TIMEOUT", f"predict did not return within {timeout_s:.0f}s")
    if "error" in outcome:
        exc = outcome["error"]
        raise GatewayError("SERVER_RAISED_EXCEPTION", f"{type(exc).__name__}: {exc}") from exc
    return outcome["row"]


def write_submission(rows: list[pl.DataFrame], path: Path) -> pl.DataFrame:
    """Write the rows to ``path`` atomically (a reader never sees half a file)."""
    frame = pl.concat(rows, how="vertical_relaxed") if rows else \
        pl.DataFrame(schema={"id": pl.String, "answer": pl.Int64})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    frame.write_parquet(tmp)
    os.replace(tmp, path)
    return frame


def score(submission: pl.DataFrame, problems: pl.DataFrame) -> tuple[int, int]:
    """(correct, scored) against the reference answers (exact integers; symbolic otherwise)."""
    from aimo_infer.evaluate.grade import grade

    reference = dict(zip(problems["id"].cast(pl.String), problems["answer"], strict=True))
    correct = scored = 0
    for pid, answer in submission.select(pl.col("id").cast(pl.String), "answer").iter_rows():
        ref = reference.get(pid)
        if ref is None:
            continue
        scored += 1
        correct += grade(int(answer), str(ref)).correct
    return correct, scored


def run_gateway(
    predict: Predict,
    problems: pl.DataFrame,
    *,
    profile: str,
    out: str | Path = "submission.parquet",
    seed: int | None = None,
    startup_s: float = 0.0,
    startup_limit_s: float = STARTUP_LIMIT_S,
    call_timeout_s: float | None = None,
) -> GatewayResult:
    """Serve every problem once, in shuffled order, as Kaggle would; write the submission.

    ``startup_s`` is how long the server took to come up (over ``startup_limit_s`` fails, as on
    Kaggle). The first call has no deadline; later calls get ``call_timeout_s`` (default: the
    competition's). A failed check raises ``GatewayError``; nothing is written then.
    """
    if profile not in ANSWER_LIMITS:
        raise ConfigError(f"profile must be aimo2 or aimo3, got {profile!r}")
    if startup_s > startup_limit_s:
        raise GatewayError("SERVER_NEVER_STARTED",
                           f"start-up took {startup_s:.0f}s, over the {startup_limit_s:.0f}s limit")
    limit = CALL_LIMITS_S[profile] if call_timeout_s is None else call_timeout_s
    seed = int.from_bytes(os.urandom(4), "big") if seed is None else seed
    order = shuffled(problems, seed)
    rows: list[pl.DataFrame] = []
    times: list[float] = []
    for index, batch in enumerate(order.iter_slices(n_rows=1)):
        started = time.monotonic()
        raw = call_with_deadline(predict, tuple(batch.get_columns()),
                                 None if index == 0 else limit)
        times.append(time.monotonic() - started)
        rows.append(check_row(raw, batch["id"], profile))
    path = Path(out)
    submission = write_submission(rows, path)
    result = GatewayResult(submission, path, seed, times)
    if "answer" in problems.columns:
        result.correct, result.scored = score(submission, problems)
    return result


def kaggle_server(predict: Predict, profile: str, extra_paths: tuple[str, ...] = ()) -> Any:
    """Kaggle's inference server for ``profile`` around ``predict`` (imported only here).

    The package ships with the competition data; when it is not importable as is, the
    competition's input directory (and ``extra_paths``) are tried.
    """
    module_name, class_name = SERVER_CLASSES[profile]
    candidates = (*extra_paths, COMPETITION_DIRS[profile])
    for attempt in (None, *candidates):
        if attempt is not None:
            if not Path(attempt, "kaggle_evaluation").is_dir() or attempt in sys.path:
                continue
            sys.path.append(attempt)
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        return getattr(module, class_name)(predict)
    raise ImportError(f"{module_name} not found (looked in sys.path and {list(candidates)})")


def kaggle_evaluation_available() -> bool:
    """Whether Kaggle's ``kaggle_evaluation`` package can be imported here."""
    return importlib.util.find_spec("kaggle_evaluation") is not None or any(
        Path(d, "kaggle_evaluation").is_dir() for d in COMPETITION_DIRS.values())
