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
from typing import TYPE_CHECKING

from aimo_infer.config import Config, ConfigError

if TYPE_CHECKING:
    from aimo_infer.kaggle.predict import Predictor

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
RERUN_ENV = "KAGGLE_IS_COMPETITION_RERUN"
STARTED_AT_ENV = "AIMO_RUN_STARTED_AT"  # epoch seconds when the notebook started (set by it)

REFERENCE_PROBLEMS = Path(__file__).resolve().parents[1] / "data" / "aimo-reference.jsonl"

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
    parser.add_argument("--validate", action="store_true",
                        help="save run check (ignored in a rerun): exit 1 when the engine never "
                        "became ready or every answer was the fallback; without --csv: the "
                        "competition's test.csv, else the packaged reference problems")
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
    if getattr(args, "validate", False):
        return REFERENCE_PROBLEMS
    raise ConfigError(f"no problem file: pass --csv (the default {default} does not exist)")


def as_csv(path: Path, workdir: Path) -> Path:
    """Kaggle's gateway reads CSV only: a JSONL file is converted first."""
    if path.suffix == ".csv":
        return path
    from aimo_infer.kaggle.gateway import read_problems

    target = workdir / "problems.csv"
    read_problems(path).write_csv(target)
    return target


def server_first(cfg: Config) -> None:
    """Kaggle's gateway waits 15 minutes for the server: it must start before the engine
    loads, so an eager load becomes a background one (the first call waits for it)."""
    if cfg.submission.load == "eager":
        log.warning("submission.load = eager would load the engine before the server starts; "
                    "loading in the background instead (the first call waits for it)")
        cfg.submission.load = "background"


def warn_late_start(before_s: float) -> None:
    from aimo_infer.kaggle.gateway import STARTUP_LIMIT_S

    if before_s > STARTUP_LIMIT_S:
        log.warning("the server starts %.0fs after the notebook did: over Kaggle's %.0fs "
                    "limit, a rerun fails with SERVER_NEVER_STARTED", before_s, STARTUP_LIMIT_S)


def rerun_profile(args: argparse.Namespace) -> str:
    """The competition to serve when the config cannot say: the flag, else the mounted data."""
    from aimo_infer.kaggle.gateway import COMPETITION_DIRS

    if args.profile in COMPETITION_DIRS:
        return str(args.profile)
    mounted = [p for p, d in COMPETITION_DIRS.items() if Path(d).is_dir()]
    return mounted[0] if mounted else "aimo3"


def serve_rerun(args: argparse.Namespace, entered_at: float) -> int:
    """The competition rerun: start Kaggle's server at once and serve until the gateway is
    done. Never exits non-zero: a config or engine that fails leaves ``predict`` answering
    the fallback (a scored submission), not a failed one."""
    from aimo_infer.kaggle import endpoint
    from aimo_infer.kaggle.gateway import kaggle_server
    from aimo_infer.kaggle.predict import Predictor

    predictor = None
    profile = rerun_profile(args)
    try:
        cfg = load_submission_config(args)
        profile = cfg.solve.profile
        server_first(cfg)
        before = elapsed_before_s(entered_at)
        predictor = Predictor(cfg, num_problems=args.num_problems, elapsed_before_s=before)
        predictor.start()
        endpoint.bind(predictor)
    except Exception:
        log.exception("could not set up the solver; every problem gets the fallback answer")
    try:
        warn_late_start(elapsed_before_s(entered_at))
        kaggle_server(endpoint.predict, profile).serve()  # blocks until the gateway is done
    except Exception:
        log.exception("Kaggle's inference server failed")
    finally:
        endpoint.unbind()
        if predictor is not None:
            close_and_report(predictor)
    return EXIT_OK


def serve(args: argparse.Namespace, entered_at: float | None = None) -> int:
    from aimo_infer.kaggle import endpoint
    from aimo_infer.kaggle.gateway import kaggle_evaluation_available, kaggle_server, read_problems
    from aimo_infer.kaggle.gateway import run_gateway as run_local
    from aimo_infer.kaggle.predict import Predictor

    entered_at = time.time() if entered_at is None else entered_at
    if os.environ.get(RERUN_ENV) is not None:
        return serve_rerun(args, entered_at)
    cfg = load_submission_config(args)
    profile = cfg.solve.profile
    use_kaggle = args.gateway == "kaggle" or (
        args.gateway == "auto" and kaggle_evaluation_available())
    path = problem_file(args, profile)
    problems = read_problems(path)
    num_problems = args.num_problems or problems.height
    before = elapsed_before_s(entered_at)
    log.info("profile %s, engine %s, %s gateway, %.0fs spent before start-up", profile,
             cfg.engine.name, "kaggle" if use_kaggle else "local", before)
    if use_kaggle:
        server_first(cfg)
    predictor = Predictor(cfg, num_problems=num_problems, elapsed_before_s=before)
    try:
        predictor.start()
        if use_kaggle:
            endpoint.bind(predictor)  # Kaggle's server takes a plain function named predict
            server = kaggle_server(endpoint.predict, profile)
            warn_late_start(elapsed_before_s(entered_at))
            with tempfile.TemporaryDirectory() as tmp:
                server.run_local_gateway((str(as_csv(path, Path(tmp))),))
            if Path(args.out).resolve() != Path("submission.parquet").resolve():
                shutil.move("submission.parquet", args.out)
            print(f"kaggle gateway finished; wrote {args.out}")
        else:
            result = run_local(predictor.predict, problems, profile=profile, out=args.out,
                               seed=args.shuffle_seed, startup_s=elapsed_before_s(entered_at))
            print(result.summary())
    finally:
        endpoint.unbind()
        close_and_report(predictor)
    return validation_verdict(predictor) if args.validate else EXIT_OK


def close_and_report(predictor: Predictor) -> None:
    predictor.close()
    outcomes: dict[str, int] = {}
    for call in predictor.calls:
        outcomes[call.outcome] = outcomes.get(call.outcome, 0) + 1
    if predictor.calls:
        print(f"calls: {dict(sorted(outcomes.items()))}; engine restarts: "
              f"{predictor.restarts}", file=sys.stderr)


def validation_verdict(predictor: Predictor) -> int:
    """``--validate``: fail when the engine never became ready or no problem got a real
    answer (every row holds the fallback); a save run that passes this can be submitted."""
    answered = sum(c.outcome == "answered" for c in predictor.calls)
    if not predictor.ever_ready:
        print("submission: validate: FAILED: the engine never became ready", file=sys.stderr)
        return EXIT_ERROR
    if answered == 0:
        print(f"submission: validate: FAILED: every one of {len(predictor.calls)} answers was "
              "the fallback", file=sys.stderr)
        return EXIT_ERROR
    print(f"validate: passed ({answered}/{len(predictor.calls)} problems answered by the engine)")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    from aimo_infer.backends.base import EngineError
    from aimo_infer.kaggle.gateway import GatewayError

    entered_at = time.time()
    rerun = os.environ.get(RERUN_ENV) is not None
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        if not rerun or exit_.code == 0:
            raise
        log.error("bad submission.py flags in a rerun; serving with the defaults")
        args = parser.parse_args([])
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
