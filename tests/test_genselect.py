"""GenSelect: trigger rule, candidates, prompt, parser, tally, and the step in the solve loop."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from aimo_infer.backends.base import Engine, EngineInfo, GenerationRequest, StreamDelta
from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.cli import build_parser, config_from_args
from aimo_infer.config import Config, ConfigError, GenSelectConfig, config_from_dict
from aimo_infer.solve.controller import Controller, ProblemResult, stream_seed
from aimo_infer.solve.genselect import (
    Candidate,
    Solution,
    box_spans,
    build_candidates,
    char_offsets,
    derived_seed,
    judge_messages,
    parse_judgment,
    summarize,
    tail_summary,
    tally,
    trigger,
)
from aimo_infer.solve.vote import VoteResult, majority_vote
from aimo_infer.traces import TraceWriter, read_trace
from tests.fakes import ScriptedRunner

PID = "p1"


def vote_of(*answers: int | None) -> VoteResult:
    return majority_vote(list(answers))


# --- trigger -----------------------------------------------------------------------------------


def test_trigger_needs_a_split_vote() -> None:
    cfg = GenSelectConfig()
    assert trigger(vote_of(4, 4, 4, 4), None, cfg) == (False, "unanimous")
    assert trigger(vote_of(None, None), None, cfg) == (False, "no answers")
    run, why = trigger(vote_of(*[4] * 6, *[5] * 5), None, cfg)  # leader 6/11
    assert run and "share" in why
    run, why = trigger(vote_of(*[4] * 6, *[5] * 5), None,
                       GenSelectConfig(leader_share_below=0.5))  # within one vote
    assert run and "apart" in why
    run, why = trigger(vote_of(*[4] * 5, *[5] * 3, *[6] * 4), None, cfg)  # leader 5/12
    assert run and "share" in why
    assert trigger(vote_of(*[4] * 9, 5, 6, 7), None, cfg) == (False, "not split")


def test_trigger_thresholds_are_configurable() -> None:
    strict = GenSelectConfig(leader_share_below=0.0, margin_at_most=-1)
    assert trigger(vote_of(4, 5), None, strict) == (False, "not split")
    loose = GenSelectConfig(leader_share_below=0.8, margin_at_most=-1)
    assert trigger(vote_of(*[4] * 7, 5, 6), None, loose)[0]  # 7/9 < 0.8


def test_trigger_needs_time_left() -> None:
    cfg = GenSelectConfig(min_time_left_s=30.0)
    split = vote_of(4, 4, 5, 5)
    run, why = trigger(split, 29.0, cfg)
    assert not run and why.startswith("too little time")
    assert trigger(split, 30.0, cfg)[0]
    assert trigger(split, None, cfg)[0]  # no deadline at all


# --- candidates ----------------------------------------------------------------------------------


def test_box_spans_nested_and_unclosed() -> None:
    text = r"a \boxed{\frac{1}{2}} b \boxed{3} c \boxed{4"
    assert [text[s:e] for s, e in box_spans(text)] == [r"\boxed{\frac{1}{2}}", r"\boxed{3}"]


def test_tail_summary_ends_with_the_box_and_its_delimiter() -> None:
    text = "word " * 400 + r"so the answer is $\boxed{42}$. Trailing chatter after it."
    summary = tail_summary(text, 20)
    assert summary.endswith(r"$\boxed{42}$")
    assert len(summary) <= 20 * 4
    assert not summary.startswith("ord")  # begins on a word boundary


def test_tail_summary_never_cuts_a_box() -> None:
    huge = r"\boxed{" + "x+" * 300 + "1}"
    summary = tail_summary("lead in " * 50 + huge, 10)
    assert summary == huge  # longer than the limit, but whole
    straddling = "intro " * 50 + r"\boxed{" + "y" * 60 + "} then more words and " + r"\boxed{7}"
    summary = tail_summary(straddling, 12)
    assert summary.endswith(r"\boxed{7}")
    assert summary.startswith(r"\boxed{" + "y")  # the straddling box is kept whole


def test_summary_prefers_text_after_the_reasoning() -> None:
    text = "<think>long musing \\boxed{1}</think>\nClean write-up: \\boxed{2}"
    assert summarize(text, 100) == "Clean write-up: \\boxed{2}"
    harmony = ("<|channel|>analysis<|message|>thinking \\boxed{1}<|end|><|start|>assistant"
               "<|channel|>final<|message|>Final: \\boxed{5}<|return|>")
    assert summarize(harmony, 100) == "Final: \\boxed{5}"
    assert summarize("<think>cut before the end", 100) == "<think>cut before the end"


def solutions(spec: list[tuple[int, int]]) -> list[Solution]:
    """(answer, tokens) per stream."""
    return [Solution(i, a, f"stream {i} says \\boxed{{{a}}}", t) for i, (a, t) in enumerate(spec)]


def test_candidates_one_per_answer_shortest_first() -> None:
    sols = solutions([(7, 300), (7, 100), (9, 500), (9, 200), (9, 50), (3, 10)])
    cands = build_candidates(sols, majority_vote([s.answer for s in sols]), GenSelectConfig(), 1)
    assert sorted((c.answer, c.stream) for c in cands) == [(3, 5), (7, 1), (9, 4)]


def test_candidates_caps_and_per_answer() -> None:
    many = solutions([(a, 100 + a) for a in range(20)] * 2)
    cands = build_candidates(many, majority_vote([s.answer for s in many]),
                             GenSelectConfig(per_answer=3), 0)
    assert len(cands) == 16 and len({c.answer for c in cands}) == 16  # answers first
    sols = solutions([(7, 300), (7, 100), (7, 50), (9, 500), (9, 200)])
    cfg = GenSelectConfig(per_answer=2, max_candidates=4)
    cands = build_candidates(sols, majority_vote([s.answer for s in sols]), cfg, 0)
    assert sorted(c.stream for c in cands) == [1, 2, 3, 4]  # two shortest of each


def test_candidates_shuffle_is_seeded() -> None:
    sols = solutions([(a, 10) for a in range(8)])
    vote = majority_vote([s.answer for s in sols])
    orders = {s: [c.answer for c in build_candidates(sols, vote, GenSelectConfig(), s)]
              for s in range(6)}
    assert orders[3] == [c.answer for c in build_candidates(sols, vote, GenSelectConfig(), 3)]
    assert len({tuple(o) for o in orders.values()}) > 1
    assert all(sorted(o) == list(range(8)) for o in orders.values())


def test_prompt_numbers_the_candidates_in_shown_order() -> None:
    cands = [Candidate(3, 9, "sum is \\boxed{9}", 10), Candidate(0, 7, "so \\boxed{7}", 5)]
    (message,) = judge_messages("Find x.", cands)
    text = message["content"]
    assert "Find x." in text and "0 to 1" in text
    assert text.index("Candidate 0:\nsum is \\boxed{9}") < text.index("Candidate 1:\nso")
    assert "Judgment: IDX" in text


# --- judgments ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("analysis...\nJudgment: 2", 2),
    ("Judgment: [2]", 2),
    ("**Judgment:** 2", 2),
    ("**Judgment**: [1]", 1),
    ("judgement: 0", 0),
    ("Judgment: Candidate 3", 3),
    ("Judgment:\n[1]", 1),
    ("In my judgment 2 of them are wrong.", None),  # prose, not a verdict
    ("Judgment: 0\nIn my judgment 2 of them are wrong.", 0),
    ("Judgment: 1\nOn reflection...\nJudgment: 3", 3),  # the last one
    ("Judgment: 1 ... Judgment: 7", None),  # the last is out of range: rejected, not the 1
    ("Judgment: 12", None),  # not read as 1
    ("Judgment: [IDX]\nwhere IDX...", None),  # the template echoed
    ("I think candidate 2 is right.", None),  # nothing parsable
    ("", None),
    ("<think>Judgment: 1</think>\nJudgment: 2", 2),
    ("<think>Judgment: 1</think>\nno verdict here", 1),
    ("Judgment: " + "9" * 5000, None),
])
def test_parse_judgment(text: str, expected: int | None) -> None:
    assert parse_judgment(text, 4) == expected


def test_tally_votes_and_ties() -> None:
    vote = vote_of(7, 7, 9, 9, 3)  # ordinary 7, then 9, then 3
    assert tally([9, 9, 7, None], vote, 7) == 9
    assert tally([9, 7], vote, 7) == 7  # tie: the ordinary choice
    assert tally([9, 3], vote, 7) == 9  # tie without it: the vote's ranking
    assert tally([None, None], vote, 7) == 7  # nothing parsed: the ordinary answer
    assert tally([], vote, 7) == 7


# --- config and flag -------------------------------------------------------------------------


def test_config_section_and_rules() -> None:
    cfg = config_from_dict({"genselect": {"enabled": True, "k": 8, "per_answer": 2}})
    assert cfg.genselect.enabled and cfg.genselect.k == 8
    for bad in ({"k": 0}, {"max_candidates": 17}, {"leader_share_below": 1.5},
                {"margin_at_most": -2}, {"min_time_left_s": -1.0}):
        with pytest.raises(ConfigError, match="genselect"):
            config_from_dict({"genselect": bad})
    with pytest.raises(ConfigError, match="unknown key"):
        config_from_dict({"genselect": {"judges": 4}})


def test_cli_flag_switches_it_on() -> None:
    args = build_parser().parse_args(["solve", "1+1", "--genselect"])
    assert config_from_args(args).genselect.enabled
    args = build_parser().parse_args(["solve", "1+1"])
    assert not config_from_args(args).genselect.enabled


# --- the step in the solve loop ------------------------------------------------------------------


def config(n: int, **gs: object) -> Config:
    cfg = Config()
    cfg.solve.num_streams = n
    cfg.solve.stop_policy = "all"
    cfg.solve.prompt = "cot"
    cfg.genselect.enabled = True
    cfg.genselect.min_time_left_s = 0.0
    for key, value in gs.items():
        setattr(cfg.genselect, key, value)
    return cfg


def stream_scripts(answers: list[int]) -> dict[int, list[ReplaySegment | str]]:
    return {stream_seed(0, PID, i): [f"Work for {a}. So \\boxed{{{a}}}."]
            for i, a in enumerate(answers)}


def judge_picking(answer: int) -> Callable[[GenerationRequest], list[str]]:
    """A scripted judge: names whichever candidate the prompt shows with ``answer``."""
    def judge(request: GenerationRequest) -> list[str]:
        shown = re.findall(r"Candidate (\d+):\n[^\n]*\\boxed\{(\d+)\}", request.prompt or "")
        index = next(i for i, a in shown if int(a) == answer)
        return [f"Candidate {index} checks out.\n**Judgment:** [{index}]"]
    return judge


def solve(engine: Engine, cfg: Config, deadline_in: float | None = None,
          tracer: TraceWriter | None = None) -> ProblemResult:
    async def go() -> ProblemResult:
        ctl = Controller(engine, ScriptedRunner(), cfg, tracer=tracer)
        deadline = None if deadline_in is None else time.monotonic() + deadline_in
        return await ctl.solve(PID, "Find the number.", deadline)

    return asyncio.run(go())


def test_scripted_judgments_change_a_split_vote(tmp_path: Path) -> None:
    engine = ReplayEngine(stream_scripts([7, 7, 9, 9]), default=judge_picking(9))
    tracer = TraceWriter(tmp_path / "t.jsonl")
    result = solve(engine, config(4), tracer=tracer)
    tracer.close()
    record = result.genselect
    assert record is not None and record.ran
    assert result.vote.answer == 7 and record.ordinary == 7
    assert result.answer == 9 and record.chosen == 9 and record.changed
    assert [j.answer for j in record.judgments] == [9, 9, 9, 9]
    assert sorted(c["answer"] for c in record.candidates) == [7, 9]
    judge_requests = [r for r in engine.requests if "/genselect/" in r.request_id]
    assert [r.seed for r in judge_requests] == [derived_seed(0, PID, "genselect", j)
                                                for j in range(4)]
    assert engine.num_running() == 0
    events = list(read_trace(tmp_path / "t.jsonl"))
    kinds = [e["event"] for e in events]
    assert kinds.count("genselect_judgment") == 4
    start = next(e for e in events if e["event"] == "genselect_start")
    assert start["shuffle_seed"] == record.shuffle_seed and len(start["candidates"]) == 2
    end = next(e for e in events if e["event"] == "genselect_end")
    assert end["changed"] is True and end["ordinary"] == 7 and end["chosen"] == 9
    assert next(e for e in events if e["event"] == "problem_end")["answer"] == 9
    assert result.genselect is not None and result.genselect.to_record()["chosen"] == 9


def test_unanimous_vote_does_not_run() -> None:
    engine = ReplayEngine(stream_scripts([7, 7, 7]), default=judge_picking(7))
    result = solve(engine, config(3))
    assert result.genselect is not None and not result.genselect.ran
    assert result.genselect.reason == "unanimous" and result.answer == 7
    assert not any("/genselect/" in r.request_id for r in engine.requests)


def test_too_little_time_does_not_run() -> None:
    engine = ReplayEngine(stream_scripts([7, 9]), default=judge_picking(9))
    result = solve(engine, config(2, min_time_left_s=3600.0), deadline_in=600.0)
    assert result.genselect is not None and not result.genselect.ran
    assert result.genselect.reason.startswith("too little time")
    assert result.answer == 7
    assert not any("/genselect/" in r.request_id for r in engine.requests)


def test_switched_off_leaves_no_record() -> None:
    cfg = config(2)
    cfg.genselect.enabled = False
    engine = ReplayEngine(stream_scripts([7, 9]), default=judge_picking(9))
    result = solve(engine, cfg)
    assert result.genselect is None and result.answer == 7
    assert result.genselect is None


def test_nothing_parsable_keeps_the_ordinary_answer() -> None:
    engine = ReplayEngine(stream_scripts([7, 9]),
                          default=lambda r: ["Both look plausible to me; hard to say."])
    result = solve(engine, config(2))
    record = result.genselect
    assert record is not None and record.ran
    assert [j.index for j in record.judgments] == [None] * 4
    assert result.answer == 7 and not record.changed


class StallingJudge(Engine):
    """Streams come from a replay script; judgment requests never end until cancelled, as a
    slow engine would behave (the cancel contract of aimo_infer/backends/base.py)."""

    def __init__(self, streams: ReplayEngine) -> None:
        self.streams = streams
        self.events: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []

    @property
    def info(self) -> EngineInfo:
        return self.streams.info

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        if "/genselect/" not in request.request_id:
            async for delta in self.streams.generate(request):
                yield delta
            return
        event = self.events[request.request_id] = asyncio.Event()
        yield StreamDelta("Judgment: 1 ... let me reconsider", 7)
        await event.wait()
        del self.events[request.request_id]
        yield StreamDelta("", 0, "cancelled")

    async def cancel(self, request_id: str) -> None:
        if request_id in self.events:
            self.cancelled.append(request_id)
            self.events[request_id].set()
        else:
            await self.streams.cancel(request_id)

    def num_running(self) -> int:
        return self.streams.num_running() + len(self.events)

    async def shutdown(self) -> None:
        await self.streams.shutdown()


def test_deadline_cancels_judgments_on_the_engine() -> None:
    engine = StallingJudge(ReplayEngine(stream_scripts([7, 9])))
    result = solve(engine, config(2, max_s=0.05))
    record = result.genselect
    assert record is not None and record.ran
    assert sorted(engine.cancelled) == [f"{PID}/genselect/{j}" for j in range(4)]
    assert engine.num_running() == 0
    assert [j.finish for j in record.judgments] == ["deadline"] * 4
    assert [j.index for j in record.judgments] == [None] * 4  # cut text does not vote
    assert result.answer == 7 and not record.changed


def test_problem_deadline_bounds_the_step() -> None:
    engine = StallingJudge(ReplayEngine(stream_scripts([7, 9])))
    result = solve(engine, config(2, max_s=3600.0), deadline_in=1.5)
    assert result.genselect is not None and result.genselect.ran
    assert len(engine.cancelled) == 4 and result.answer == 7


# --- dry run, report, simulate -------------------------------------------------------------------


def judge_picking_nonzero(request: GenerationRequest) -> list[str]:
    """A scripted judge that names the first candidate whose answer is not 0."""
    shown = re.findall(r"Candidate (\d+):\n[^\n]*\\boxed\{(\d+)\}", request.prompt or "")
    index = next(i for i, a in shown if a != "0")
    return [f"Judgment: {index}"]


def test_dry_run_records_both_choices_and_report_and_simulate_show_them(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from aimo_infer.cli import main
    from aimo_infer.evaluate.dryrun import run_problems
    from aimo_infer.evaluate.report import write_report
    from aimo_infer.evaluate.runs import read_results
    from tests.dryrun_fixtures import cot_config, synthetic_problems

    problems = synthetic_problems(3)
    scripts: dict[int, list[ReplaySegment | str]] = {}
    for n, p in enumerate(problems):
        # p0, p1: 0 twice (shorter, first to two votes), the right answer twice; p2: unanimous
        answers = ["0", "0", p.answer, p.answer] if n < 2 else [p.answer] * 4
        for j, answer in enumerate(answers):
            text = "x" * (8 + 24 * j) + f" \\boxed{{{answer}}}"
            scripts[stream_seed(0, p.id, j)] = [ReplaySegment(text, 9 + 24 * j)]
    engine = ReplayEngine(scripts, yield_every=1, default=judge_picking_nonzero)
    cfg = cot_config("all", 4, len(problems))
    cfg.genselect.enabled = True
    cfg.genselect.min_time_left_s = 0.0
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    run_problems(cfg, problems, run_dir, engine=engine)

    records = {r.problem_id: r for r in read_results(run_dir)}
    for pid in ("p0", "p1"):
        r = records[pid]
        assert r.genselect is not None and r.genselect["ran"] and r.genselect["changed"]
        assert r.correct is True and r.genselect["ordinary_correct"] is False
        assert r.genselect["ordinary"] == 0 and len(r.genselect["judgments"]) == 4
    assert records["p2"].genselect is not None and not records["p2"].genselect_ran

    report = write_report(run_dir)
    section = report["genselect"]
    assert section["ran"] == 2 and section["changed"] == 2 and section["fixed"] == 2
    assert section["broke"] == 0
    assert section["accuracy_with"] == 1.0 and section["accuracy_without"] == pytest.approx(1 / 3)
    assert section["not_run"] == {"unanimous": 1}
    markdown = (run_dir / "report.md").read_text()
    assert "## GenSelect" in markdown and "without it 33.3%" in markdown

    assert main(["simulate", str(run_dir), "--no-genselect", "--no-budget"]) == 0
    out = capsys.readouterr().out
    off = next(line for line in out.splitlines() if "GenSelect off" in line)
    assert "1.00 / 3" in off
    on = next(line for line in out.splitlines() if "recorded" in line and "off" not in line)
    assert "3.00 / 3" in on

    # the simulated rows never use GenSelect, so they match the recorded run without it
    from aimo_infer.evaluate.simulate_cli import recorded_score, rescore_records

    records = read_results(run_dir)
    simulated = rescore_records(records, "all", None, None, 0.0, 4096)
    off, on = recorded_score(records, genselect=False), recorded_score(records)
    assert simulated.num_correct == off.correct == 1
    assert simulated.total_s == pytest.approx(off.total_s)
    assert on.total_s == pytest.approx(off.total_s + sum(r.genselect_s for r in records))
    assert sum(r.genselect_s for r in records) > 0


def test_a_run_without_genselect_has_no_report_section(tmp_path: Path) -> None:
    from aimo_infer.evaluate.report import build_report, render_markdown
    from tests.dryrun_fixtures import record_run, synthetic_problems

    records, _ = record_run(tmp_path / "run", synthetic_problems(2), "all", num_streams=4,
                            scripted_streams=4)
    assert all(r.genselect is None for r in records)
    report = build_report(tmp_path / "run")
    assert report["genselect"] is None
    assert "GenSelect" not in render_markdown(report)


def test_a_dry_run_does_not_resume_with_genselect_toggled(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from tests.dryrun_fixtures import synthetic_problems, write_jsonl
    from tests.test_dryrun import dryrun, write_replay_trace

    problems = synthetic_problems(3)
    dataset = write_jsonl(tmp_path / "set.jsonl", problems)
    trace = write_replay_trace(tmp_path / "replay.jsonl", problems, 4)
    out = tmp_path / "run"
    assert dryrun(dataset, out, trace, "--limit", "1") == 0
    capsys.readouterr()
    results = (out / "results.jsonl").read_bytes()
    assert dryrun(dataset, out, trace, "--genselect") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "other genselect settings (genselect.enabled)" in err
    assert (out / "results.jsonl").read_bytes() == results
    # a run written before GenSelect existed (no section) resumes as "off"
    config_path = out / "config.json"
    data = json.loads(config_path.read_text())
    del data["config"]["genselect"]
    config_path.write_text(json.dumps(data))
    assert dryrun(dataset, out, trace) == 0


def test_summary_counts_tokens_with_the_engine_tokenizer() -> None:
    """A word-per-token tokenizer (offsets as a fast tokenizer gives them) sets the length."""
    def words(text: str) -> list[tuple[int, int]]:
        return [m.span() for m in re.finditer(r"\S+", text)]

    text = " ".join(f"w{i}" for i in range(500)) + r" so \boxed{12}"
    summary = tail_summary(text, 5, words)
    assert summary == r"w497 w498 w499 so \boxed{12}"


def test_summary_with_the_default_model_tokenizer() -> None:
    """The engine tokenizer's own offsets (the default model's, when it is prepared here)."""
    from aimo_infer.models import default_model_dir, load_prepared
    from aimo_infer.solve.genselect_run import token_offsets

    pytest.importorskip("transformers")
    prepared = load_prepared(default_model_dir())
    if prepared is None:
        pytest.skip("the default model is not prepared (aimo-infer models prepare)")
    offsets = token_offsets(str(prepared.tokenizer_dir))
    assert offsets(" hello world") and offsets is not char_offsets
    text = "Reasoning. " * 300 + r"Therefore the answer is $\boxed{\frac{7}{2}}$."
    summary = tail_summary(text, 12, offsets)
    assert summary.endswith(r"$\boxed{\frac{7}{2}}$")
    assert len(offsets(summary)) <= 13  # the word-boundary step may drop, never add, a token


def test_a_failing_step_keeps_the_ordinary_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    from aimo_infer.solve import genselect_run

    def broken(*args: object) -> str:
        raise RuntimeError("chat template exploded")

    monkeypatch.setattr(genselect_run, "render_prompt", broken)
    engine = ReplayEngine(stream_scripts([7, 9]), default=judge_picking(9))
    result = solve(engine, config(2))
    assert result.answer == 7 and result.genselect is not None
    assert result.genselect.reason.startswith("failed: RuntimeError")


def test_a_cancelled_solve_cancels_its_judgments_on_the_engine() -> None:
    engine = StallingJudge(ReplayEngine(stream_scripts([7, 9])))

    async def go() -> None:
        ctl = Controller(engine, ScriptedRunner(), config(2, max_s=3600.0))
        task = asyncio.create_task(ctl.solve(PID, "Find the number.", None))
        while len(engine.events) < 4:  # every judgment is running
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert sorted(engine.cancelled) == [f"{PID}/genselect/{j}" for j in range(4)]
    assert engine.num_running() == 0


def test_summary_budget_fits_the_context() -> None:
    from aimo_infer.solve.genselect_run import summary_budget

    cfg = Config()
    assert summary_budget(cfg, 1 << 20, 16) == cfg.genselect.summary_tokens
    assert summary_budget(cfg, 16384, 16) == (16384 - 4096 - 512) // 16 < 1024
    assert summary_budget(cfg, 4096, 16) == 64  # never under 64


@pytest.mark.parametrize("bad", [
    {"ran": "yes", "elapsed_s": 1.0},
    {"ran": True, "elapsed_s": -1.0},
    {"ran": True, "elapsed_s": 1.0, "ordinary_correct": "no"},
    {"ran": True},
])
def test_a_bad_genselect_record_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            bad: dict[str, object]) -> None:
    import json

    from aimo_infer.cli import main
    from tests.dryrun_fixtures import record, stream

    good = json.loads(record("p0", "4", 4, [stream(0, 4, True, 1.0)]).to_json())
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "results.jsonl").write_text(json.dumps({**good, "genselect": bad}) + "\n")
    assert main(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "results.jsonl:1" in err and "genselect" in err
