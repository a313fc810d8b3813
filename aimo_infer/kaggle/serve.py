"""Serve a submission: Kaggle's inference server in a competition rerun, else a local gateway.

``submission.py`` at the top of the project is a thin wrapper around ``main`` here.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from aimo_infer.config import Config, ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
STARTED_AT_ENV = "AIMO_RUN_STARTED_AT"  # epoch seconds when the notebook started (set by it)

log = logging.getLogger("aimo_infer.kaggle.serve")


def build_parser() -> argparse.ArgumentParser:
    from aimo_infer.cli import add_run_options

    parser = argparse.ArgumentParser(
        prog="submission.py",
        description="Kaggle entry point of aimo-infer. In a competition rerun "
        f"(${RERUN_ENV} set) it serves Kaggle's AIMO-2 or AIMO-3 inference server with a "
        "predict() that never raises and always answers before its time budget runs out. "
        "Otherwise it runs a gateway on a problem file: Kaggle's own when the kaggle_evaluation "
        "package is importable, else a local one that behaves the same (shuffled order, one "
        "problem at a time, id check, 15-minute start-up rule, per-call deadline) and reports "
        "the score when the file has answers. Writes submission.parquet.",
        epilog="Example: python submission.py --config configs/cpu-default.toml "
        "--csv problems.csv --streams 2 --max-tokens 64",
    )
    add_run_options(parser, profiles=("aimo2", "aimo3"))  # a submission's answers are integers
    parser.add_argument("--csv", metavar="FILE",
                        help="problems (CSV with id,problem[,answer], or JSONL); default: the "
                        "competition's test.csv under /kaggle/input")
    parser.add_argument("--out", metavar="FILE", default="submission.parquet",
                        help="where to write the submission (default: submission.parquet)")
    parser.add_argument("--gateway", choices=["auto", "local", "kaggle"], default="auto",
                        help="outside a rerun: kaggle_evaluation's gateway (kaggle), ours "
                        "(local), or kaggle when importable (auto, default)")
    parser.add_argument("--shuffle-seed", type=int, metavar="N",
                        help="serving order of the local gateway (default: random)")
    parser.add_argument("--load", choices=["eager", "background", "first_call"],
                        help="when the engine loads (default from the config: background, "
                        "so the server is up at once and the first call waits)")
    parser.add_argument("--trace", metavar="FILE", help="JSONL trace of every problem and call")
    parser.add_argument("--num-problems", type=int, metavar="N",
                        help="problems the time budget plans for (default: rows of the file, "
                        "or budget.num_problems in a rerun)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    return parser


def load_submission_config(args: argparse.Namespace) -> Config:
    """The config file with flags on top; the profile must be a competition's."""
    from aimo_infer.cli import config_from_args

    cfg = config_from_args(args)
    if cfg.solve.profile not in ("aimo2", "aimo3"):
        raise ConfigError(f"a submission needs --profile aimo2 or aimo3, not {cfg.solve.profile!r}")
    if args.load:
        cfg.submission.load = args.load
    if args.trace:
        cfg.submission.trace = args.trace
    if args.num_problems is not None and args.num_problems < 1:
        raise ConfigError("--num-problems must be >= 1")
    return cfg


def elapsed_before_s(entered_at: float) -> float:
    """Seconds the run spent before it could serve: since the notebook started (it sets
    $AIMO_RUN_STARTED_AT), else since this entry point was entered (``entered_at``, epoch s).

    Not the process start time: an in-process caller (a test, a notebook kernel) may have been
    running long before this run began."""
    started = os.environ.get(STARTED_AT_ENV)
    if started:
        try:
            return max(0.0, time.time() - float(started))
        except ValueError:
            log.warning("ignoring %s=%r (not a number)", STARTED_AT_ENV, started)
    return max(0.0, time.time() - entered_at)


def problem_file(args: argparse.Namespace, profile: str) -> Path:
    from aimo_infer.kaggle.gateway import COMPETITION_DIRS

    if args.csv:
        return Path(args.csv)
    default = Path(COMPETITION_DIRS[profile], "test.csv")
    if default.is_file():
        return default
    raise ConfigError(f"no problem file: pass --csv (the default {default} does not exist)")


def as_csv(path: Path, workdir: Path) -> Path:
    """Kaggle's gateway reads CSV only: a JSONL file is converted first."""
    if path.suffix == ".csv":
        return path
    from aimo_infer.kaggle.gateway import read_problems

    target = workdir / "problems.csv"
    read_problems(path).write_csv(target)
    return target


def serve(args: argparse.Namespace, entered_at: float | None = None) -> int:
    from aimo_infer.kaggle.gateway import kaggle_evaluation_available, kaggle_server, read_problems
    from aimo_infer.kaggle.gateway import run_gateway as run_local
    from aimo_infer.kaggle.predict import Predictor

    cfg = load_submission_config(args)
    profile = cfg.solve.profile
    rerun = os.environ.get(RERUN_ENV) is not None
    use_kaggle = rerun or args.gateway == "kaggle" or (
        args.gateway == "auto" and kaggle_evaluation_available())
    problems = None
    path: Path | None = None
    if not rerun:
        path = problem_file(args, profile)
        problems = read_problems(path)
    num_problems = args.num_problems or (None if problems is None else problems.height)
    entered_at = time.time() if entered_at is None else entered_at
    before = elapsed_before_s(entered_at)
    log.info("profile %s, engine %s, %s gateway, %.0fs spent before start-up", profile,
             cfg.engine.name, "kaggle" if use_kaggle else "local", before)
    predictor = Predictor(cfg, num_problems=num_problems, elapsed_before_s=before)
    try:
        predictor.start()
        if use_kaggle:
            server = kaggle_server(predictor.predict, profile)
            if rerun:
                server.serve()
                return EXIT_OK
            assert path is not None
            with tempfile.TemporaryDirectory() as tmp:
                server.run_local_gateway((str(as_csv(path, Path(tmp))),))
            if Path(args.out).resolve() != Path("submission.parquet").resolve():
                shutil.move("submission.parquet", args.out)
            print(f"kaggle gateway finished; wrote {args.out}")
            return EXIT_OK
        assert problems is not None
        result = run_local(predictor.predict, problems, profile=profile, out=args.out,
                           seed=args.shuffle_seed, startup_s=elapsed_before_s(entered_at))
        print(result.summary())
        return EXIT_OK
    finally:
        predictor.close()
        outcomes: dict[str, int] = {}
        for call in predictor.calls:
            outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
        if predictor.calls:
            print(f"calls: {dict(sorted(outcomes.items()))}; engine restarts: "
                  f"{predictor.restarts}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    from aimo_infer.backends.base import EngineError
    from aimo_infer.kaggle.gateway import GatewayError

    entered_at = time.time()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return serve(args, entered_at)
    except KeyboardInterrupt:
        print("submission: interrupted", file=sys.stderr)
        return 130
    except (ConfigError, GatewayError, EngineError, FileNotFoundError, ImportError,
            ValueError, OSError) as exc:
        if args.verbose:
            raise
        print(f"submission: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR
