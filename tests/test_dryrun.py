"""Dry runs: the served loop with the time budget, resumable output, the command and its
errors, and one run on the real CPU engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimo_infer.backends.replay import ReplayEngine
from aimo_infer.cli import build_parser, main
from aimo_infer.config import BudgetConfig, EngineConfig
from aimo_infer.evaluate.datasets import Problem
from aimo_infer.evaluate.dryrun import prepare, run_problems, serving_order
from aimo_infer.evaluate.run_budget import Stopwatch, scaled_budget, solve_window
from aimo_infer.evaluate.runs import read_results
from aimo_infer.solve.controller import stream_seed
from aimo_infer.traces import read_trace
from tests.dryrun_fixtures import (
    cot_config,
    record_run,
    scripts_for,
    synthetic_problems,
    write_jsonl,
)


def test_budget_is_scaled_to_the_subset() -> None:
    budget = scaled_budget(BudgetConfig(), 10)
    assert budget.total_s == 10 * 18000 / 50 and budget.num_problems == 10
    assert budget.safety_margin_s == 600 * 10 / 50
    assert scaled_budget(BudgetConfig(), 4, per_problem_s=100).total_s == 400
    assert scaled_budget(BudgetConfig(), 4, total_s=1000).total_s == 1000
    assert solve_window(560.0, 10.0) == 550.0 and solve_window(20.0, 10.0) == 15.0


def test_serving_order_is_a_seeded_shuffle() -> None:
    problems = synthetic_problems(20)
    order = serving_order(problems, 3)
    assert order == serving_order(problems, 3) != serving_order(problems, 4)
    assert sorted(p.id for p in order) == sorted(p.id for p in problems)


def test_each_problem_is_recorded_with_its_budget(tmp_path: Path) -> None:
    records, engine = record_run(tmp_path, synthetic_problems(3), "nemo")
    assert [r.problem_id for r in records] == ["p0", "p1", "p2"]
    assert [r.order for r in records] == [0, 1, 2]
    for r in records:
        assert len(r.streams) == 12 and r.used_s <= r.deadline_s < r.allotted_s
        assert r.correct == (r.answer == int(r.reference))  # type: ignore[arg-type]
        assert all(s.correct == (s.answer == int(r.reference)) for s in r.streams)  # type: ignore[arg-type]
    # 5 h / 50 less the 600 s margin is 348 s a problem: nemo scales its 350 s base down to it
    assert records[0].allotted_s == pytest.approx(348.0) and records[0].extra_s == 0.0
    assert records[1].bank_before_s == records[0].bank_after_s > 0
    assert records[1].extra_s == min(210.0, records[0].bank_after_s)
    events = list(read_trace(tmp_path / "traces.jsonl"))
    assert sum(e["event"] == "problem_end" for e in events) == 3
    assert engine.num_running() == 0


def test_a_second_run_does_no_work(tmp_path: Path) -> None:
    problems = synthetic_problems(3)
    record_run(tmp_path, problems, "nemo")
    before = (tmp_path / "results.jsonl").read_bytes()
    engine = ReplayEngine(scripts_for(problems, 12))
    new = run_problems(cot_config("nemo", 12, 3), problems, tmp_path, engine=engine)
    assert new == [] and engine.requests == []
    assert (tmp_path / "results.jsonl").read_bytes() == before


def test_resume_solves_only_the_rest_and_keeps_the_bank(tmp_path: Path) -> None:
    problems = synthetic_problems(4)
    first, _ = record_run(tmp_path, problems[:2], "nemo")
    engine = ReplayEngine(scripts_for(problems, 12), yield_every=1)
    new = run_problems(cot_config("nemo", 12, 4), problems, tmp_path, engine=engine)
    assert [r.problem_id for r in new] == ["p2", "p3"]
    assert {r.seed for r in engine.requests} == {stream_seed(0, p, i) for p in ("p2", "p3")
                                                 for i in range(12)}
    assert new[0].bank_before_s == pytest.approx(first[1].bank_after_s)
    assert [r.problem_id for r in read_results(tmp_path)] == ["p0", "p1", "p2", "p3"]


def test_non_integer_and_large_answers_are_graded_as_written(tmp_path: Path) -> None:
    problems = [Problem("frac", "x?", "\\frac{1}{3}", "s"), Problem("big", "y?", "6014950", "s")]
    texts = {"frac": ["\\boxed{\\dfrac{1}{3}}", "\\boxed{0.5}"],
             "big": ["\\boxed{6014950}", "\\boxed{950}"]}
    scripts = {stream_seed(0, p.id, i): [texts[p.id][i]] for p in problems for i in range(2)}
    engine = ReplayEngine(scripts, yield_every=1)
    records = run_problems(cot_config("all", 2, 2), problems, tmp_path, engine=engine)
    for r in records:
        assert [s.correct for s in r.streams] == [True, False], r.problem_id
    assert records[1].streams[0].answer == 6014950  # free profile: never reduced mod 1000


def test_a_torn_last_line_is_dropped_and_redone(tmp_path: Path) -> None:
    problems = synthetic_problems(2)
    record_run(tmp_path, problems, "nemo")
    path = tmp_path / "results.jsonl"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + lines[1][:40])  # killed while writing the second record
    engine = ReplayEngine(scripts_for(problems, 12))
    new = run_problems(cot_config("nemo", 12, 2), problems, tmp_path, engine=engine)
    assert [r.problem_id for r in new] == ["p1"]
    assert [r.problem_id for r in read_results(tmp_path)] == ["p0", "p1"]


def test_resume_after_kill_repairs_a_torn_trace_line(tmp_path: Path) -> None:
    problems = synthetic_problems(3)
    record_run(tmp_path, problems[:2], "nemo")
    results, traces = tmp_path / "results.jsonl", tmp_path / "traces.jsonl"
    lines = results.read_text().splitlines(keepends=True)
    results.write_text(lines[0] + lines[1][:40])  # killed while writing the second record
    complete = traces.read_text()
    with traces.open("a") as fh:  # ... and the trace's next event was half written
        fh.write('{"event": "segment", "problem_id": "p1", "te')
    engine = ReplayEngine(scripts_for(problems, 12), yield_every=1)
    new = run_problems(cot_config("nemo", 12, 3), problems, tmp_path, engine=engine)
    assert [r.problem_id for r in new] == ["p1", "p2"]
    text = traces.read_text()
    assert text.startswith(complete) and '"te\n' not in text and '"te{' not in text
    events = list(read_trace(traces))  # every line parses: nothing glued onto the torn one
    assert [e["problem_id"] for e in events if e["event"] == "problem_end"] == ["p0", "p1", "p1",
                                                                               "p2"]
    replay = ReplayEngine.from_config(EngineConfig("replay", str(traces)))  # replayable again
    assert set(replay._scripts) == {e["seed"] for e in events if e["event"] == "segment"}


# --- the command ---------------------------------------------------------------------------


def write_replay_trace(path: Path, problems: list, num_streams: int) -> Path:  # type: ignore[type-arg]
    """A recorded trace the replay engine can serve: one segment per stream."""
    scripts = scripts_for(problems, num_streams)
    with path.open("w") as fh:
        for p in problems:
            for i in range(num_streams):
                seed = stream_seed(0, p.id, i)
                seg = scripts[seed][0]
                fh.write(json.dumps({"event": "segment", "problem_id": p.id, "seed": seed,
                                     "text": seg.text, "tokens": seg.tokens,
                                     "finish_reason": "stop"}) + "\n")
    return path


def dryrun(dataset: Path, out: Path, trace: Path, *extra: str) -> int:
    return main(["dryrun", str(dataset), "--engine", "replay", "--model", str(trace),
                 "--prompt", "cot", "--streams", "4", "--out", str(out), "--quiet", *extra])


def test_dryrun_command_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    problems = synthetic_problems(4)
    dataset = write_jsonl(tmp_path / "set.jsonl", problems)
    trace = write_replay_trace(tmp_path / "replay.jsonl", problems, 4)
    out = tmp_path / "run"
    assert dryrun(dataset, out, trace, "--limit", "3") == 0
    for name in ("traces.jsonl", "results.jsonl", "config.json", "report.md", "report.json"):
        assert (out / name).is_file(), name
    assert len(list(out.glob("*.png"))) >= 2
    config = json.loads((out / "config.json").read_text())
    assert config["config"]["solve"]["profile"] == "aimo3"  # the set's integer answers
    assert config["config"]["budget"]["total_s"] == 3 * 360.0
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["problems"] == 3
    results = (out / "results.jsonl").read_bytes()

    trace.rename(tmp_path / "moved.jsonl")  # an engine start would now fail
    assert dryrun(dataset, out, trace, "--limit", "3") == 0  # nothing left: no engine start
    assert capsys.readouterr().err == ""
    assert (out / "results.jsonl").read_bytes() == results

    assert dryrun(dataset, out, trace) == 1  # a fourth problem needs the engine
    err = capsys.readouterr().err
    assert "replay trace not found" in err and err.count("\n") == 1
    assert (out / "results.jsonl").read_bytes() == results


@pytest.mark.parametrize(("content", "extra", "message", "code"), [
    (None, [], "dataset not found", 1),
    ('{"id": "a", "problem": "x"}\n{"id": \n', [], "set.jsonl:2: not a JSON object", 1),
    ('{"id": "a", "problem": "x"}\n', ["--source", "aime99"], "unknown source 'aime99'", 1),
    ('{"id": "a", "problem": "x"}\n', ["--policy", "agree=0"], "bad stop policy", 2),
    ('{"id": "a", "problem": "x"}\n', ["--streams", "0"], "--streams must be >= 1", 2),
])
def test_dryrun_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      content: str | None, extra: list[str], message: str,
                                      code: int) -> None:
    dataset = tmp_path / "set.jsonl"
    if content is not None:
        dataset.write_text(content)
    assert main(["dryrun", str(dataset), "--out", str(tmp_path / "run"), *extra]) == code
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_other_settings_on_an_existing_run_are_refused(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    problems = synthetic_problems(2)
    dataset = write_jsonl(tmp_path / "set.jsonl", problems)
    trace = write_replay_trace(tmp_path / "replay.jsonl", problems, 4)
    assert dryrun(dataset, tmp_path / "run", trace) == 0
    capsys.readouterr()
    assert dryrun(dataset, tmp_path / "run", trace, "--max-tokens", "50") == 2
    assert "other solve settings (solve.sampling)" in capsys.readouterr().err


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*"))
            if p.is_file()}


@pytest.mark.parametrize(("files", "message"), [
    ({"config.json": '{"name": "my project"}\n', "report.md": "# notes\n"},
     "config.json: not a dry-run config"),
    ({"config.json": "not json", "results.jsonl": "{}\n"}, "not a dry-run config (not valid"),
    ({"notes.txt": "keep me\n"}, "is not empty and holds no dry run"),
    ({"results.jsonl": "{}\n"}, "is not empty and holds no dry run"),
])
def test_a_foreign_out_directory_is_refused_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], files: dict[str, str],
        message: str) -> None:
    problems = synthetic_problems(2)
    dataset = write_jsonl(tmp_path / "set.jsonl", problems)
    trace = write_replay_trace(tmp_path / "replay.jsonl", problems, 4)
    out = tmp_path / "theirs"
    out.mkdir()
    for name, text in files.items():
        (out / name).write_text(text)
    before = _snapshot(out)
    assert dryrun(dataset, out, trace) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "use a new --out" in err
    assert _snapshot(out) == before


def test_a_run_of_another_dataset_is_refused_untouched(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = synthetic_problems(2)
    dataset = write_jsonl(tmp_path / "set.jsonl", first)
    out = tmp_path / "run"
    assert dryrun(dataset, out, write_replay_trace(tmp_path / "r1.jsonl", first, 4)) == 0
    capsys.readouterr()
    before = _snapshot(out)
    # the same ids in another file; then the same file name with other problems
    other = synthetic_problems(5, source="other")
    elsewhere = write_jsonl(tmp_path / "other.jsonl", other)
    (tmp_path / "b").mkdir()
    same_name = write_jsonl(tmp_path / "b" / "set.jsonl", other)
    trace = write_replay_trace(tmp_path / "r2.jsonl", other, 4)
    for path in (elsewhere, same_name):
        assert dryrun(path, out, trace) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds a run of another dataset (set" in err
        assert _snapshot(out) == before
    assert dryrun(dataset, out, trace, "--shuffle-seed", "9") == 2
    assert "served in another order" in capsys.readouterr().err
    assert _snapshot(out) == before


def test_the_same_dataset_resumes_from_a_copy_or_an_empty_directory(tmp_path: Path) -> None:
    problems = synthetic_problems(3)
    dataset = write_jsonl(tmp_path / "set.jsonl", problems)
    trace = write_replay_trace(tmp_path / "replay.jsonl", problems, 4)
    out = tmp_path / "run"
    out.mkdir()  # an empty directory is a new run
    assert dryrun(dataset, out, trace, "--limit", "2") == 0
    (tmp_path / "moved").mkdir()
    copy = tmp_path / "moved" / "set.jsonl"
    copy.write_bytes(dataset.read_bytes())  # the same problems, elsewhere: the same dataset
    assert dryrun(copy, out, trace) == 0
    assert sorted(r.problem_id for r in read_results(out)) == ["p0", "p1", "p2"]


def test_profile_follows_the_dataset_unless_given() -> None:
    parser = build_parser()
    config, order, run_dir, _ = prepare(parser.parse_args(["dryrun", "comp-math", "--limit",
                                                           "5"]))
    assert config.solve.profile == "free" and len(order) == 5
    assert run_dir == Path("runs/dryrun-comp-math")
    config, *_ = prepare(parser.parse_args(["dryrun", "comp-math", "--profile", "aimo3"]))
    assert config.solve.profile == "aimo3"
    config, *_ = prepare(parser.parse_args(["dryrun", "aimo-reference"]))
    assert config.solve.profile == "aimo3"


def test_the_dataset_defaults_to_comp_math_and_source_filters_it() -> None:
    config, order, run_dir, run_config = prepare(build_parser().parse_args(
        ["dryrun", "--source", "aime25"]))
    assert run_config["dataset"] == "comp-math" and run_dir == Path("runs/dryrun-comp-math")
    assert len(order) == 30 and {p.source for p in order} == {"aime25"}
    assert config.solve.profile == "free"


@pytest.mark.slow
def test_dryrun_on_the_cpu_engine(tmp_path: Path) -> None:
    pytest.importorskip("llama_cpp")
    out = tmp_path / "run"
    config = tmp_path / "small.toml"  # a small context and batch: quick on a shared CPU
    config.write_text("[engine.options]\nn_ctx = 512\nmax_sequences = 2\n")
    shortest = "hmmt-nov24-guts-10,hmmt-nov24-guts-9,hmmt-feb24-guts-20"  # short prompts
    argv = ["dryrun", "comp-math", "--config", str(config), "--ids", shortest, "--streams",
            "2", "--max-tokens", "12", "--prompt", "cot", "--out", str(out), "--quiet"]
    assert main(argv) == 0
    records = read_results(out)
    assert len(records) == 3 and all(len(r.streams) == 2 for r in records)
    assert all(s.tokens <= 12 for r in records for s in r.streams)
    report = json.loads((out / "report.json").read_text())
    for key in ("summary", "by_source", "time", "streams", "early_stop", "wrong"):
        assert key in report
    for metric in ("accuracy", "pass@1", "maj@k", "pass@k", "selection_loss", "no_answer_rate"):
        assert metric in report["summary"]
    assert len(list(out.glob("*.png"))) >= 2 and (out / "report.md").is_file()
    events = list(read_trace(out / "traces.jsonl"))
    assert sum(e["event"] == "problem_end" for e in events) == 3
    results = (out / "results.jsonl").read_bytes()
    assert main(argv) == 0  # a second run does no work
    assert (out / "results.jsonl").read_bytes() == results
    assert len(list(read_trace(out / "traces.jsonl"))) == len(events)


def test_the_stopwatch_runs_only_while_serving() -> None:
    now = [100.0]
    watch = Stopwatch(lambda: now[0])
    assert watch() == 0.0
    now[0] += 50  # engine loading: not charged
    assert watch() == 0.0
    watch.resume()
    now[0] += 7
    assert watch() == 7.0
    watch.pause()
    now[0] += 30  # grading: not charged
    watch.advance(3.0)  # time charged by an earlier process (a resumed run)
    assert watch() == 10.0
    watch.resume()
    now[0] += 1
    assert watch() == 11.0
