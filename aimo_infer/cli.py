"""``aimo-infer``: solve a problem, prepare models, and (in other modules) run dry runs."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from collections.abc import Callable, Sequence

from aimo_infer.config import Config, ConfigError, check_setting, load_config, validate_config

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2

# Subcommands that live in their own modules: name -> "module:function" that adds the parser
# (and sets ``func``, which returns an exit code).
PLUGIN_COMMANDS: dict[str, str] = {
    "models": "aimo_infer.models:add_models_parser",
    "dryrun": "aimo_infer.evaluate.dryrun:add_dryrun_parser",
    "report": "aimo_infer.evaluate.report:add_report_parser",
    "simulate": "aimo_infer.evaluate.simulate_cli:add_simulate_parser",
    "bundle": "aimo_infer.kaggle.bundle:add_bundle_parser",
    # Kaggle submission tools (aimo_infer/kaggle/)
    "budget": "aimo_infer.kaggle.budget_cli:add_budget_parser",
    "serve-model": "aimo_infer.kaggle.launcher:add_serve_model_parser",
    "check-config": "aimo_infer.check_config:add_check_config_parser",
}


def add_run_options(parser: argparse.ArgumentParser,
                    profiles: Sequence[str] = ("aimo2", "aimo3", "free")) -> None:
    """Options shared by every command that runs the solve loop (``profiles``: the answer
    profiles the command accepts)."""
    parser.add_argument("--config", metavar="FILE", help="TOML config (see configs/)")
    parser.add_argument("--engine", help="engine: llamacpp (default), hf, vllm, trtllm, openai, "
                        "replay")
    parser.add_argument("--model", help="model path or name for the engine")
    parser.add_argument("--profile", choices=list(profiles),
                        help="answer profile: aimo2 (0-999, mod 1000), aimo3 (0-99999), free")
    parser.add_argument("--prompt", help="prompt profile: tir-fence, tir-toolcall, cot, harmony")
    parser.add_argument("--streams", type=int, metavar="N", help="seeded streams per problem")
    parser.add_argument("--policy", help="early stop: preset (nemo, agree10, imagination, "
                        "agree4, all) or rules like 'agree=4of5,quorum=10'")
    parser.add_argument("--max-tokens", type=int, metavar="N", help="tokens per stream")
    parser.add_argument("--seed", type=int, help="run seed (stream seeds derive from it)")
    parser.add_argument("--genselect", action="store_true",
                        help="on a split vote, let the model judge summaries of its own "
                        "solutions (GenSelect; settings in the config's [genselect])")
    parser.add_argument("--select", help="answer selection: majority (default), entropy, "
                        "vote-then-confidence, deepconf (confidence rules ask for logprobs)")
    parser.add_argument("--logprobs", type=int, metavar="K", help="top-K token logprobs per "
                        "token: confidence in records and traces (0: off, the default)")


# Flags that set a range-checked setting: flag -> (argparse dest, dotted config key).
SETTING_FLAGS: dict[str, tuple[str, str]] = {
    "--profile": ("profile", "solve.profile"),
    "--streams": ("streams", "solve.num_streams"),
    "--max-tokens": ("max_tokens", "solve.sampling.max_tokens"),
}


def config_from_args(args: argparse.Namespace) -> Config:
    """The config file (or defaults) with command-line flags on top, every value range-checked
    by the rules of ``aimo_infer.config`` (the same ones a TOML file meets)."""
    cfg = load_config(args.config)
    for flag, (dest, key) in SETTING_FLAGS.items():
        value = getattr(args, dest, None)
        if value is not None:
            check_setting(key, value, flag)
    if args.engine:
        cfg.engine.name = args.engine
    if args.model:
        cfg.engine.model = args.model
    if args.profile:
        cfg.solve.profile = args.profile
    if args.prompt:
        cfg.solve.prompt = args.prompt
    if args.streams is not None:
        cfg.solve.num_streams = args.streams
    if args.policy is not None:
        cfg.solve.stop_policy = args.policy
    if args.max_tokens is not None:
        cfg.solve.sampling.max_tokens = args.max_tokens
    if args.seed is not None:
        cfg.solve.run_seed = args.seed
    if args.select is not None:
        from aimo_infer.config import SELECT_RULES

        if args.select not in SELECT_RULES:
            raise ConfigError(f"--select must be one of {', '.join(SELECT_RULES)}")
        cfg.solve.select = args.select
    if args.logprobs is not None:
        if args.logprobs < 0:
            raise ConfigError("--logprobs must be >= 0")
        cfg.solve.confidence.logprobs = args.logprobs
    if getattr(args, "genselect", False):
        cfg.genselect.enabled = True
    return validate_config(cfg)


def read_problem_arg(problem: str) -> str:
    """The problem text of ``solve``: the argument, or ``@FILE``'s UTF-8 text; a file that
    cannot be read as text gives one line naming it."""
    if not problem.startswith("@"):
        return problem
    path = problem[1:]
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                          "pass a text file") from exc
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the problem ({exc.strerror or exc})") from exc


def _add_solve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "solve", help="solve one problem and print the vote",
        description="Run n seeded tool-integrated-reasoning streams on one problem, execute the "
        "code they write in the sandbox, vote, and print the answer, the vote split and a "
        "summary of every stream.",
    )
    p.add_argument("problem", help="problem text, or @FILE to read it from a file")
    add_run_options(p)
    p.add_argument("--timeout", type=float, metavar="S", help="deadline for the problem (s)")
    p.add_argument("--trace", metavar="FILE", help="append JSONL trace events to FILE")
    p.add_argument("--show-text", action="store_true", help="print every stream's full text")
    p.set_defaults(func=_cmd_solve)


def _cmd_solve(args: argparse.Namespace) -> int:
    from aimo_infer.evaluate.report_console import print_problem_result
    from aimo_infer.runtime import harness, run_bounded
    from aimo_infer.traces import TraceWriter

    cfg = config_from_args(args)
    if args.timeout is not None:
        check_setting("solve.stream_timeout_s", args.timeout, "--timeout")
    problem = read_problem_arg(args.problem)
    if not problem.strip():
        raise ConfigError("the problem text is empty")
    tracer = TraceWriter(args.trace) if args.trace else None

    async def run() -> int:
        async with harness(cfg, tracer) as controller:
            deadline = None if args.timeout is None else time.monotonic() + args.timeout
            result = await controller.solve("cli", problem, deadline)
        print_problem_result(result, show_text=args.show_text)
        return EXIT_OK

    try:
        return run_bounded(run())
    finally:
        if tracer is not None:
            tracer.close()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aimo-infer",
        description="Inference harness for AI Mathematical Olympiad submissions: seeded "
        "tool-integrated reasoning streams, a hardened sandbox, voting, early stopping and a "
        "shared time budget.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_solve_parser(sub)
    for target in PLUGIN_COMMANDS.values():
        module, function = target.split(":")
        getattr(importlib.import_module(module), function)(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """What a command reports in one line: domain errors (``aimo_infer.errors``) and a path the
    system refuses; any other exception is a bug and shows its traceback."""
    from aimo_infer.errors import UserError

    return (UserError, PermissionError)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except KeyboardInterrupt:
        print("aimo-infer: interrupted", file=sys.stderr)
        return 130
    except _user_errors() as exc:
        if args.verbose:
            raise
        print(f"aimo-infer: error: {exc}", file=sys.stderr)
        return EXIT_USAGE if isinstance(exc, ConfigError) else EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
