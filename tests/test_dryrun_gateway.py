"""The dry run is the submission: the same problems through ``aimo-infer dryrun`` and through
the local gateway (the Kaggle serving loop) around the submission's ``Predictor`` give the
same serving order, the same allotments and the same answers.

Time is virtual and advances only as the engine emits tokens, so both runs charge the budget
exactly the same and the allotments can be compared for equality. Every problem fits its
solve window (the watchdog waits in real seconds and never fires here).
"""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from aimo_infer.backends.base import GenerationRequest, StreamDelta
from aimo_infer.backends.replay import ReplayEngine, ReplaySegment
from aimo_infer.cli import build_parser
from aimo_infer.config import Config
from aimo_infer.evaluate.dryrun import prepare, run_problems
from aimo_infer.evaluate.runs import ProblemRecord
from aimo_infer.kaggle.gateway import GatewayResult, read_problems, run_gateway
from aimo_infer.kaggle.predict import CallRecord, Predictor
from tests.dryrun_fixtures import scripts_for, synthetic_problems, write_jsonl

SECONDS_PER_TOKEN = 1.5  # 270 s per problem: the bank fills, the guard binds on the last one


class TokenClock:
    """Virtual seconds: moved on by the engine only, never by the wall clock."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TimedReplay(ReplayEngine):
    """The replay engine, each emitted token taking ``SECONDS_PER_TOKEN`` of virtual time."""

    def __init__(self, scripts: dict[int, list[ReplaySegment]], clock: TokenClock) -> None:
        super().__init__(scripts, yield_every=1)
        self.clock = clock

    async def generate(self, request: GenerationRequest) -> AsyncIterator[StreamDelta]:
        async for delta in super().generate(request):
            self.clock.now += delta.num_tokens * SECONDS_PER_TOKEN
            yield delta


def dryrun_side(dataset: Path, out: Path, seed: int) -> tuple[Config, list[ProblemRecord]]:
    """``aimo-infer dryrun`` as typed (its problem selection and budget), engine injected."""
    args = build_parser().parse_args([
        "dryrun", str(dataset), "--profile", "aimo3", "--prompt", "cot", "--streams", "4",
        "--policy", "all", "--shuffle-seed", str(seed), "--time-limit", str(TIME_LIMIT_S), "--out", str(out),
        "--quiet"])
    config, order, run_dir, _ = prepare(args)
    run_dir.mkdir(parents=True)
    clock = TokenClock()
    records = run_problems(config, order, run_dir, engine=TimedReplay(scripts(), clock),
                           clock=clock)
    return config, sorted(records, key=lambda r: r.order)


def gateway_side(config: Config, dataset: Path, out: Path,
                 seed: int) -> tuple[GatewayResult, list[CallRecord]]:
    """The local gateway serving the file to the submission's ``Predictor``."""
    served = copy.deepcopy(config)
    served.submission.load = "eager"
    clock = TokenClock()
    engine = TimedReplay(scripts(), clock)
    problems = read_problems(dataset)
    with Predictor(served, engine_factory=lambda _: engine, num_problems=problems.height,
                   clock=clock) as predictor:
        result = run_gateway(predictor.predict, problems, profile="aimo3", seed=seed,
                             out=out / "submission.parquet")
    return result, predictor.calls


# 7 problems x 350 s base + the 84 s safety margin: the nemo base is not scaled down
TIME_LIMIT_S = 7 * 350 + 84


def scripts() -> dict[int, list[ReplaySegment]]:
    return scripts_for(synthetic_problems(7), 4)


@pytest.mark.parametrize("seed", [4, 11])
def test_dryrun_and_gateway_serve_alike(tmp_path: Path, seed: int) -> None:
    dataset = write_jsonl(tmp_path / "set.jsonl", synthetic_problems(7))
    config, records = dryrun_side(dataset, tmp_path / "dryrun", seed)
    gateway, calls = gateway_side(config, dataset, tmp_path, seed)

    assert [r.problem_id for r in records] == gateway.submission["id"].to_list()
    assert [r.problem_id for r in records] != [f"p{i}" for i in range(7)]  # really shuffled
    assert [(r.base_s, r.extra_s, r.allotted_s) for r in records] == [
        (c.allotment.base_s, c.allotment.extra_s, c.allotment.seconds)  # type: ignore[union-attr]
        for c in calls]
    assert [r.used_s for r in records] == [c.elapsed_s for c in calls]
    assert [r.submitted for r in records] == gateway.submission["answer"].to_list()
    assert [r.submitted for r in records] == [c.answer for c in calls]
    # the run really drew on the bank (each problem leaves 80 s of its 350 s base unused) and
    # no allotment planned more than the time left for it
    assert [r.extra_s for r in records][:4] == [0.0, 80.0, 160.0, 210.0]
    assert records[-1].allotted_s == min(350.0 + 210.0, TIME_LIMIT_S - 84 - 6 * 270.0)
    assert all(r.stop_reason == "all finished" for r in records)
    assert sum(bool(r.correct) for r in records) == gateway.correct
