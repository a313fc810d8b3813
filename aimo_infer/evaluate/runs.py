"""A dry-run directory: its files, and the one-line-per-problem record the report and the
simulator read.

Times in a record are seconds from the problem's start (just before the controller's
``solve``), so a record can be re-scored without the clock it was measured on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.config import Config, dataclass_from_table
from aimo_infer.errors import DataError, MissingFile
from aimo_infer.solve.stream import stopped_early, votes
from aimo_infer.solve.vote import Answer, vote_split
from aimo_infer.traces import read_jsonl_tolerant, repair_torn_tail

TRACES = "traces.jsonl"
RESULTS = "results.jsonl"
CONFIG = "config.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"



@dataclass
class StreamRecord:
    """What one stream did, graded."""

    index: int
    seed: int
    end: str | None
    answer: Answer | None
    correct: bool | None  # None: no reference answer
    tokens: int
    code_calls: int
    code_s: float  # time spent running its code cells
    start_s: float
    finish_s: float
    error: str | None = None
    confidence: dict[str, Any] | None = None  # ConfidenceSummary record (logprobs on)
    end_detail: str | None = None  # why it ended, where ``end`` alone does not say

    @property
    def votes(self) -> bool:
        return votes(self.end)


@dataclass
class ProblemRecord:
    """One finished problem of a dry run: the answer, the vote, the time and every stream."""

    problem_id: str
    source: str
    order: int  # 0-based position in serving order
    reference: str | None
    answer: Answer | None  # the vote's answer
    submitted: Answer | None  # what the submission returns (aimo profiles: an int, fallback
    # when no answer); this is what is graded
    correct: bool | None
    grade_method: str
    votes: list[tuple[Answer, int]]
    num_missing: int
    stop_reason: str
    elapsed_s: float  # the controller's solve time
    used_s: float  # what the time budget was charged
    decision_s: float  # when the controller stopped waiting (last vote in, or the deadline)
    base_s: float
    extra_s: float
    allotted_s: float  # the budget's allotment for the problem
    deadline_s: float  # the controller's deadline, from the problem's start (allotment less
    # the submission's wind-down)
    bank_before_s: float
    bank_after_s: float
    total_tokens: int
    streams: list[StreamRecord] = field(default_factory=list)
    # GenSelect's record (None: switched off), with "ordinary_correct": the ordinary rule's
    # choice graded, so accuracy with and without it come from one run
    genselect: dict[str, Any] | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_dict(cls, data: Any) -> ProblemRecord:
        """A record from its JSON object; a missing, unknown or wrong-typed field raises
        ``ValueError`` naming it (a report must not fail halfway on a bad value)."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        streams, votes = data.get("streams", []), data.get("votes", [])
        if not isinstance(streams, list):
            raise ValueError(f"streams: expected a list, got {streams!r}")
        if not isinstance(votes, list) or not all(_is_vote(v) for v in votes):
            raise ValueError(f"votes: expected [answer, count] pairs, got {votes!r}")
        record: ProblemRecord = dataclass_from_table(
            cls, {**data, "streams": [], "votes": []}, error=ValueError)
        record.streams = [dataclass_from_table(StreamRecord, s, f"streams[{i}]", ValueError)
                          for i, s in enumerate(streams)]
        record.votes = [(a, c) for a, c in votes]
        if record.genselect is not None and not _is_genselect(record.genselect):
            raise ValueError(f"genselect: expected ran (bool), elapsed_s (>= 0), "
                             f"ordinary_correct (bool or null), got {record.genselect!r}")
        return record

    @property
    def genselect_ran(self) -> bool:
        return bool(self.genselect and self.genselect.get("ran"))

    @property
    def ordinary_correct(self) -> bool | None:
        """Whether the ordinary rule's choice was right (GenSelect switched off)."""
        if not self.genselect_ran:
            return self.correct
        return self.genselect.get("ordinary_correct")  # type: ignore[union-attr]

    @property
    def genselect_s(self) -> float:
        """Seconds GenSelect took on this problem (0 when it did not run)."""
        if not self.genselect:
            return 0.0
        return float(self.genselect["elapsed_s"])

    @property
    def stopped_early(self) -> bool:
        """A policy stopped the problem with streams still running."""
        return stopped_early(self.stop_reason)

    def vote_split(self) -> str:
        return vote_split(self.votes, self.num_missing)


def _is_genselect(data: dict[str, Any]) -> bool:
    """The fields of a GenSelect record that the report and the simulator read."""
    elapsed = data.get("elapsed_s")
    return (isinstance(data.get("ran"), bool) and isinstance(elapsed, (int, float))
            and not isinstance(elapsed, bool) and elapsed >= 0
            and (data.get("ordinary_correct") is None
                 or isinstance(data.get("ordinary_correct"), bool))
            and isinstance(data.get("changed", False), bool))


def _is_vote(pair: Any) -> bool:
    """``[answer, count]``: an int or str answer, a count >= 1."""
    return (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], (int, str))
            and not isinstance(pair[0], bool) and isinstance(pair[1], int)
            and not isinstance(pair[1], bool) and pair[1] >= 1)


def read_results(run_dir: str | Path) -> list[ProblemRecord]:
    """The finished problems of a run, in the order they finished; errors name file and line."""
    path = Path(run_dir) / RESULTS
    if not path.is_file():
        raise MissingFile(f"no {RESULTS} in {run_dir} (not a dry-run directory?)")
    records = []
    for number, data in read_jsonl_tolerant(path, "a JSON record"):
        try:
            records.append(ProblemRecord.from_dict(data))
        except ValueError as exc:
            raise DataError(f"{path}:{number}: not a problem record ({exc})") from exc
    return records


def append_result(run_dir: str | Path, record: ProblemRecord) -> None:
    """Add one finished problem, flushed to disk before returning (a crash keeps it)."""
    path = Path(run_dir) / RESULTS
    with path.open("a", encoding="utf-8") as fh:
        fh.write(record.to_json() + "\n")
        fh.flush()


def repair_results(run_dir: str | Path) -> None:
    """Make results.jsonl end on a line boundary (a kill mid-write) before appending."""
    repair_torn_tail(Path(run_dir) / RESULTS)


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    """config.json of a run (empty when absent, e.g. a results file copied alone)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc.msg})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object")
    if "config" in data:  # the values the report and the simulator read must have their types
        try:
            dataclass_from_table(Config, data["config"], "config", ValueError,
                                 ignore_unknown=True)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from exc
    return data
