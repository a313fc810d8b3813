"""The dry-run report: metrics on hand-made records, files written, the command."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from aimo_infer.cli import main
from aimo_infer.evaluate.report import (
    build_report,
    early_stop_section,
    problem_scores,
    source_table,
    write_report,
)
from aimo_infer.evaluate.runs import append_result
from tests.dryrun_fixtures import cot_config, record, record_run, stream, synthetic_problems


def mixed_records() -> list:  # type: ignore[type-arg]
    """a1: right by majority; a2: wrong, right answer in the minority; b1: wrong, never
    generated; b2: no answer, the right one only in a cancelled stream's partial text."""
    a1 = record("a1", "4", 4, [stream(0, 4, True, 1.0), stream(1, 4, True, 2.0),
                               stream(2, 5, False, 3.0), stream(3, None, False, 4.0)],
                source="A", order=0)
    a2 = record("a2", "4", 7, [stream(0, 7, False, 1.0), stream(1, 7, False, 2.0),
                               stream(2, 4, True, 3.0), stream(3, 7, False, 4.0)],
                source="A", order=1)
    b1 = record("b1", "10", 3, [stream(0, 3, False, 1.0), stream(1, 2, False, 2.0)],
                source="B", order=2)
    b2 = record("b2", "8", None, [stream(0, None, False, 1.0), stream(1, None, False, 2.0),
                                  stream(2, 8, True, 9.0, end="cancelled")],
                stop_reason="quorum: 2 of 3 finished", source="B", order=3)
    return [a1, a2, b1, b2]


def test_problem_scores() -> None:
    a1, a2, b1, b2 = mixed_records()
    assert problem_scores(a1) == {"pass@1": 0.5, "maj@k": True, "pass@k": True, "k": 4}
    assert problem_scores(a2) == {"pass@1": 0.25, "maj@k": False, "pass@k": True, "k": 4}
    assert problem_scores(b1)["pass@k"] is False
    scores = problem_scores(b2)  # the cancelled stream does not vote but did write the answer
    assert scores["k"] == 2 and scores["pass@1"] == 0.0 and scores["pass@k"] is True


def test_source_table_and_selection_loss() -> None:
    rows = {r["source"]: r for r in source_table(mixed_records())}
    assert set(rows) == {"A", "B", "all"}
    assert rows["A"]["accuracy"] == 0.5 and rows["A"]["pass@k"] == 1.0
    assert rows["A"]["selection_loss"] == 0.5 and rows["A"]["pass@1"] == pytest.approx(0.375)
    assert rows["B"]["accuracy"] == 0.0 and rows["B"]["no_answer_rate"] == 0.5
    assert rows["all"]["correct"] == 1 and rows["all"]["graded"] == 4
    assert rows["all"]["selection_loss"] == pytest.approx(0.75 - 0.25)


def test_problems_without_reference_are_not_graded() -> None:
    ungraded = record("u", None, 4, [stream(0, 4, None, 1.0)], source="A")
    rows = {r["source"]: r for r in source_table([*mixed_records()[:2], ungraded])}
    assert rows["A"]["problems"] == 3 and rows["A"]["graded"] == 2
    assert rows["A"]["accuracy"] == 0.5


def test_early_stop_savings_estimate() -> None:
    done = [stream(i, 4, True, 10.0 * (i + 1), tokens=40 * (i + 1)) for i in range(3)]
    cancelled = stream(3, None, False, 31.0, tokens=150, end="cancelled")
    stopped = record("s", "4", 4, [*done, cancelled], stop_reason="agreement: 3 agree on 4")
    finished = record("f", "4", 4, done)
    section = early_stop_section([stopped, finished], max_tokens=1000)
    assert section["problems_stopped_early"] == 1
    row = section["per_problem"][0]
    # the cancelled stream had 150 tokens at 30 s (5 tok/s) and no longer stream ended by
    # itself, so it runs to the token limit: 850 more tokens, 170 s more.
    assert row["without_stop_s"] == pytest.approx(30.0 + 170.0 + 0.1)
    assert row["saved_s"] == pytest.approx(170.0)
    assert row["saved_tokens"] == 1000 - 150


def test_write_report_on_a_recorded_run(tmp_path: Path) -> None:
    records, _ = record_run(tmp_path, synthetic_problems(5, source="syn"), "nemo")
    config = cot_config("nemo", 12, 5)
    (tmp_path / "config.json").write_text(json.dumps({"dataset": "syn",
                                                      "config": dataclasses.asdict(config)}))
    report = write_report(tmp_path)
    on_disk = json.loads((tmp_path / "report.json").read_text())
    assert on_disk["summary"] == report["summary"]
    assert report["summary"]["problems"] == 5
    assert report["summary"]["accuracy"] == sum(bool(r.correct) for r in records) / 5
    assert report["time"]["total_s"] == pytest.approx(sum(r.used_s for r in records))
    assert report["time"]["budget_total_s"] == 5 * 360.0
    assert report["streams"]["streams"] == 60
    assert len(report["wrong"]) == sum(r.correct is False for r in records)
    assert len(report["plots"]) >= 2
    for name in report["plots"]:
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (tmp_path / "report.md").read_text()
    assert "| syn | 5 |" in text and "selection loss" in text
    for wrong in report["wrong"]:
        assert wrong["problem_id"] in text and wrong["votes"] in text


def test_report_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for r in mixed_records():
        append_result(tmp_path, r)
    assert main(["report", str(tmp_path)]) == 0
    assert "accuracy 1/4 = 25.0%" in capsys.readouterr().out
    assert build_report(tmp_path)["summary"]["pass@k"] == 0.75


@pytest.mark.parametrize("setup", ["missing", "empty", "garbage"])
def test_report_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      setup: str) -> None:
    run = tmp_path / "run"
    if setup != "missing":
        run.mkdir()
        (run / "results.jsonl").write_text("" if setup == "empty" else "{oops\n{}\n")
    assert main(["report", str(run)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("aimo-infer: error:") and err.count("\n") == 1


def _damaged(change: str) -> str:
    """A record line of a real run with one field changed to the wrong type."""
    data = json.loads(mixed_records()[0].to_json())
    if change == "used_s":
        data["used_s"] = "12.5"
    elif change == "stream tokens":
        data["streams"][0]["tokens"] = "100"
    elif change == "votes":
        data["votes"] = [[5, "x"]]
    elif change == "streams":
        data["streams"] = {"0": {}}
    elif change == "missing":
        del data["stop_reason"]
    elif change == "not an object":
        data = [data]
    return json.dumps(data) + "\n"


@pytest.mark.parametrize(("change", "message"), [
    ("used_s", "used_s: expected float, got '12.5'"),
    ("stream tokens", "streams[0].tokens: expected int, got '100'"),
    ("votes", "votes: expected [answer, count] pairs"),
    ("streams", "streams: expected a list"),
    ("missing", "missing key(s) ['stop_reason']"),
    ("not an object", "expected a JSON object, got list"),
])
def test_a_wrong_typed_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          change: str, message: str) -> None:
    good = mixed_records()[1].to_json() + "\n"
    (tmp_path / "results.jsonl").write_text(good + _damaged(change))
    for command in ("report", "simulate"):
        assert main([command, str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "results.jsonl:2: not a problem record" in err, err
        assert message in err, err
    assert not (tmp_path / "report.md").exists()


def test_a_wrong_typed_run_config_is_one_line(tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    for r in mixed_records():
        append_result(tmp_path, r)
    config = {"dataset": "d", "config": {"budget": {"total_s": "5h"}, "later_key": 1}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    for command in ("report", "simulate"):
        assert main([command, str(tmp_path)]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "config.budget.total_s: expected float, got '5h'" in err
    config["config"]["budget"]["total_s"] = 3600  # keys of other versions are ignored
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert main(["report", str(tmp_path)]) == 0


def _with_confidence(s: object, lowest: float, entropy: float) -> object:
    from aimo_infer.solve.confidence import ConfidenceSummary

    summary = ConfidenceSummary(100, entropy, entropy, lowest, lowest, lowest, 16, 8)
    return dataclasses.replace(s, confidence=summary.to_record())  # type: ignore[type-var]


def test_confidence_section_rechooses_per_rule_and_draws_right_vs_wrong(tmp_path: Path) -> None:
    from aimo_infer.evaluate.report import write_report

    # Two wrong streams (7) outvote one sure right one (4): majority is wrong, entropy right.
    streams = [_with_confidence(stream(0, 7, False, 1.0), 1.0, 2.0),
               _with_confidence(stream(1, 7, False, 2.0), 1.0, 2.0),
               _with_confidence(stream(2, 4, True, 3.0), 5.0, 0.01)]  # fmt: skip
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    append_result(run_dir, record("p1", "4", 7, streams))  # type: ignore[arg-type]
    report = write_report(run_dir)
    rules = {row["rule"]: row["right"] for row in report["confidence"]["rules"]}
    assert rules == {"majority": 0, "entropy": 1, "vote-then-confidence": 0, "deepconf": 1}
    assert report["confidence"]["streams"]["right"]["lowest_group"] == 5.0
    assert report["confidence"]["streams"]["wrong"]["streams"] == 2
    markdown = (run_dir / "report.md").read_text()
    assert "## Confidence" in markdown and "| entropy | 1/1 | 100.0% |" in markdown
    assert (run_dir / "stream_confidence.png").is_file()


def test_no_confidence_section_without_recorded_logprobs(tmp_path: Path) -> None:
    from aimo_infer.evaluate.report import write_report

    record_run(tmp_path / "run", synthetic_problems(2), "all", num_streams=3)
    report = write_report(tmp_path / "run")
    assert report["confidence"] is None
    assert "## Confidence" not in (tmp_path / "run" / "report.md").read_text()
    assert not (tmp_path / "run" / "stream_confidence.png").exists()
