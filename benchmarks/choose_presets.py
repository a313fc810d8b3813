"""Choose the default early-stop preset on evidence: real answers and lengths of 11 models.

For each model in data/traces/ (AIME 2024 + 2025, 60 problems, 80+ samples each), many
simulated submissions are drawn: the problems in a shuffled order, 12 samples per problem,
each arriving at length / tokens-per-second, the 350 s base + 210 s buffer budget (5 h / 50
problems = 360 s per problem, scaled to 60) with the submission's 10 s wind-down. Every preset
in ``aimo_infer.solve.policies.PRESETS`` and a few nearby rules are scored on the SAME draws, through
the simulator (the controller's policy objects, vote and ``TimeBudget``). The baseline,
measured in the same run, is ``all`` (wait for every stream; only the deadline stops).

Recommendation: the preset with the best pooled expected accuracy; a preset within two paired
standard errors of it that takes less time per problem wins the tie. The last line reads
``recommended_preset=NAME``.

Assumption: a stream's speed does not depend on how many others run (on a real engine,
cancelled streams make the rest a little faster, which favours early stopping further).
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass

from aimo_infer.config import BudgetConfig, SolveConfig, SubmissionConfig
from aimo_infer.evaluate.run_budget import scaled_budget
from aimo_infer.evaluate.sample_traces import (
    SampledProblem,
    draw_run,
    group_by_model,
    load_sampled_problems,
)
from aimo_infer.evaluate.simulate import simulate_run
from aimo_infer.solve.policies import PRESETS, parse_policy

NEARBY = ("agree=3of4", "agree=5of6", "agree=3", "agree=5", "agree=4of5,quorum=8",
          "agree=4of5,quorum=11", "agree=4,quorum=10", "quorum=8")


@dataclass
class Tally:
    """Per model and draw: problems right and seconds used (summed over the run)."""

    correct: dict[tuple[str, int], int]
    seconds: dict[tuple[str, int], float]
    deadline_hits: int = 0
    problems: int = 0

    def pooled_correct(self, draw: int, models: Sequence[str]) -> int:
        return sum(self.correct[m, draw] for m in models)


def run_policies(groups: dict[str, list[SampledProblem]], policies: Sequence[str],
                 tok_s: float, draws: int, seed: int) -> dict[str, Tally]:
    """Every policy on the same draws: same problem order and samples per (model, draw)."""
    base = BudgetConfig()
    wind_down = SubmissionConfig().wind_down_s
    tallies = {p: Tally({}, {}) for p in policies}
    for model, problems in sorted(groups.items()):
        budget = scaled_budget(base, len(problems))
        for d in range(draws):
            drawn = draw_run(problems, 12, tok_s, random.Random(f"{seed}:{model}:{d}"))
            for policy in policies:
                outcome = simulate_run(drawn, parse_policy(policy), budget, wind_down)
                tally = tallies[policy]
                tally.correct[model, d] = outcome.num_correct
                tally.seconds[model, d] = outcome.total_s
                tally.deadline_hits += sum(p.stop_reason == "deadline" for p in outcome.problems)
                tally.problems += len(outcome.problems)
    return tallies


def paired_gap(a: Tally, b: Tally, models: Sequence[str], draws: int) -> tuple[float, float]:
    """Mean and standard error over draws of (a right - b right), pooled over models."""
    diffs = [a.pooled_correct(d, models) - b.pooled_correct(d, models) for d in range(draws)]
    se = statistics.stdev(diffs) / math.sqrt(draws) if draws > 1 else 0.0
    return statistics.mean(diffs), se


def summary_table(tallies: dict[str, Tally], models: Sequence[str], draws: int,
                  problems_per_draw: int, baseline: str) -> list[dict[str, float | str]]:
    rows = []
    base = tallies[baseline]
    base_s = sum(base.seconds.values()) / base.problems
    for policy, tally in tallies.items():
        right = statistics.mean(tally.pooled_correct(d, models) for d in range(draws))
        gap, se = paired_gap(tally, base, models, draws)
        mean_s = sum(tally.seconds.values()) / tally.problems
        rows.append({"policy": policy, "accuracy": right / problems_per_draw,
                     "gap_pp": 100 * gap / problems_per_draw,
                     "gap_se_pp": 100 * se / problems_per_draw, "mean_s": mean_s,
                     "time_ratio": mean_s / base_s,
                     "deadline_rate": tally.deadline_hits / tally.problems})
    return rows


def recommend(tallies: dict[str, Tally], models: Sequence[str], draws: int) -> str:
    """Best pooled accuracy among presets; a faster preset within 2 paired s.e. wins ties."""
    presets = [p for p in tallies if p in PRESETS]
    means = {p: statistics.mean(tallies[p].pooled_correct(d, models) for d in range(draws))
             for p in presets}
    best = max(presets, key=lambda p: means[p])
    close = []
    for p in presets:
        gap, se = paired_gap(tallies[p], tallies[best], models, draws)
        if gap >= -2 * se:
            close.append(p)
    return min(close, key=lambda p: sum(tallies[p].seconds.values()))


def print_rows(rows: list[dict[str, float | str]], title: str) -> None:
    print(f"\n{title}")
    print(f"{'policy':<24}{'accuracy':>9}{'vs all (pp)':>17}{'s/problem':>11}"
          f"{'time vs all':>12}{'deadline':>10}")
    for r in rows:
        marker = " *" if r["policy"] in PRESETS else ""
        print(f"{str(r['policy']) + marker:<24}{100 * float(r['accuracy']):>8.2f}%"
              f"{float(r['gap_pp']):>+10.2f} ±{float(r['gap_se_pp']):<5.2f}"
              f"{float(r['mean_s']):>11.1f}{float(r['time_ratio']):>11.2f}x"
              f"{100 * float(r['deadline_rate']):>9.1f}%")


def per_model_table(tallies: dict[str, Tally], models: Sequence[str], draws: int,
                    groups: dict[str, list[SampledProblem]]) -> None:
    presets = [p for p in tallies if p in PRESETS]
    print("\nper model, presets: expected accuracy % (mean s/problem)")
    print(f"{'model':<30}" + "".join(f"{p:>18}" for p in presets))
    for m in models:
        n = len(groups[m])
        cells = []
        for p in presets:
            acc = statistics.mean(tallies[p].correct[m, d] for d in range(draws)) / n
            sec = statistics.mean(tallies[p].seconds[m, d] for d in range(draws)) / n
            cells.append(f"{100 * acc:>10.1f} ({sec:>4.0f})")
        print(f"{m:<30}" + "".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--traces", default="data/traces", help="per-sample trace folder")
    parser.add_argument("--tok-s", type=float, default=80.0,
                        help="tokens/s per stream (default 80: ~960 tok/s over 12 streams, "
                        "a 14B FP8 model with a drafter on one H100)")
    parser.add_argument("--draws", type=int, default=200, help="runs per model and policy")
    parser.add_argument("--sensitivity", type=float, nargs="*", default=[40.0, 160.0],
                        help="other tokens/s per stream to check the choice at")
    parser.add_argument("--sensitivity-draws", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    groups = group_by_model(load_sampled_problems(args.traces))
    models = sorted(groups)
    per_draw = sum(len(groups[m]) for m in models)
    policies = list(PRESETS) + [r for r in NEARBY if r not in PRESETS.values()]
    print(f"{len(models)} models, {per_draw} problems per draw, 12 streams, "
          f"{args.tok_s:g} tok/s per stream, budget 350 s + up to 210 s (360 s/problem), "
          f"{args.draws} draws per model; * = preset")
    started = time.perf_counter()
    tallies = run_policies(groups, policies, args.tok_s, args.draws, args.seed)
    rows = summary_table(tallies, models, args.draws, per_draw, "all")
    print_rows(rows, f"all models pooled at {args.tok_s:g} tok/s per stream "
                     f"(baseline: all, same draws; ± paired standard error)")
    per_model_table(tallies, models, args.draws, groups)
    choice = recommend(tallies, models, args.draws)
    print(f"\n({time.perf_counter() - started:.0f} s)")

    for tok_s in args.sensitivity:
        presets = list(PRESETS)
        other = run_policies(groups, presets, tok_s, args.sensitivity_draws, args.seed)
        print_rows(summary_table(other, models, args.sensitivity_draws, per_draw, "all"),
                   f"sensitivity: presets at {tok_s:g} tok/s per stream "
                   f"({args.sensitivity_draws} draws)")
        print(f"best there: {recommend(other, models, args.sensitivity_draws)}")

    default = SolveConfig().stop_policy
    gap, se = paired_gap(tallies[choice], tallies[default], models, args.draws)
    ratio = sum(tallies[choice].seconds.values()) / sum(tallies[default].seconds.values())
    print(f"\nrecommendation at {args.tok_s:g} tok/s per stream: {choice} "
          f"({PRESETS[choice] or 'wait for all'}); against the current default {default}: "
          f"{100 * gap / per_draw:+.2f} ±{100 * se / per_draw:.2f} pp accuracy, "
          f"{ratio:.2f}x the time")
    print(f"recommended_preset={choice}")


if __name__ == "__main__":
    main()
