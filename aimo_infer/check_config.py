"""``aimo-infer check-config FILE``: validate a config without loading a model, print the recipe.

Checks what would otherwise fail minutes into a Kaggle run: the TOML and its keys, value ranges
(the rules of aimo_infer/config.py), the budget rule, the engine's extra installed here, the prompt profile against the engine (the harmony profile
needs token-in/token-out), the model server table that ``aimo-infer serve-model`` reads, and paths.
Findings are ``error`` (exit 1) or
``note`` (true here but fine where the config runs, such as ``/kaggle/input`` paths).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.config import (
    MODEL_SERVER_TABLE,
    Config,
    ConfigError,
    config_from_dict,
    dataclass_from_table,
    read_toml,
)
from aimo_infer.kaggle.budget import check_budget_config
from aimo_infer.kaggle.launcher import ModelServerConfig, check_server_config
from aimo_infer.solve.policies import parse_policy

Server = dict[str, Any] | None  # the recipe's [model_server] table, if it has one
# Engines whose adapter does token-in/token-out (EngineInfo.token_io); openai only on vLLM.
TOKEN_IO_ENGINES = ("llamacpp", "replay", "vllm", "openai")
TOKEN_IO_SERVERS = ("vllm",)
KAGGLE_ROOT = "/kaggle/"


@dataclass
class Report:
    """What the check found, and the resolved settings to show."""

    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    rows: list[tuple[str, str, str]] = field(default_factory=list)  # key, value, remark
    config: Config | None = None


def check_config(path: Path) -> Report:
    """Validate the config file at ``path``; never loads an engine or a model."""
    report = Report()
    try:
        data = read_toml(path, "config file")
    except ConfigError as exc:
        report.errors.append(str(exc))
        return report
    given = {key for key, _ in _flatten("", data)}
    server: Server = data.pop(MODEL_SERVER_TABLE, None)  # the launcher's, not the harness's
    try:
        config = config_from_dict(data)  # types and the range rules of aimo_infer/config.py
    except ConfigError as exc:
        report.errors.append(f"{path}: {exc}")
        return report
    report.config = config
    try:
        check_budget_config(config.budget)
    except ConfigError as exc:
        report.errors.append(str(exc))
    try:
        parse_policy(config.solve.stop_policy)
    except ValueError as exc:
        report.errors.append(f"solve.stop_policy: {exc}")
    if server is not None:
        _check_server_table(server, report)
    _check_engine(config, server, report)
    _check_profile(config, server, report)
    _check_paths(config, server, report)
    report.rows = _rows(config, server, given)
    return report


def _check_server_table(server: Any, report: Report) -> None:
    """The launcher's own checks of the ``[model_server]`` table."""
    try:
        check_server_config(dataclass_from_table(ModelServerConfig, server, MODEL_SERVER_TABLE))
    except ConfigError as exc:
        report.errors.append(str(exc))


def _server_arg(server: Server, flag: str) -> str | None:
    args = server.get("args", []) if isinstance(server, dict) else []
    for i, arg in enumerate(args):
        if arg == flag and i + 1 < len(args):
            return str(args[i + 1])
        if isinstance(arg, str) and arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _check_engine(config: Config, server: Server, report: Report) -> None:
    from aimo_infer.backends import ENGINE_PACKAGES, ENGINES, missing_extra_message

    name = config.engine.name
    if name not in ENGINES:
        report.errors.append(f"engine.name: unknown engine {name!r}; known: {sorted(ENGINES)}")
        return
    for package in ENGINE_PACKAGES.get(name, ()):
        if importlib.util.find_spec(package) is None:
            report.errors.append(missing_extra_message(name, package))
    if name == "openai":
        from aimo_infer.backends.openai import OpenAIOptions

        try:
            OpenAIOptions.parse(dict(config.engine.options))
        except (ValueError, TypeError) as exc:
            report.errors.append(f"engine.options: {exc}")
    context = config.engine.options.get("context_length", config.engine.options.get(
        "max_model_len", config.engine.options.get("n_ctx")))
    served = _server_arg(server, "--max-model-len")
    if served is not None:
        if not served.isdigit():
            report.errors.append(f"model_server.args: --max-model-len {served!r} is not a number")
        elif isinstance(context, int) and context != int(served):
            report.errors.append(f"engine.options.context_length {context} differs from the "
                                 f"server's --max-model-len {served}")
        context = int(served) if served.isdigit() else context
    if isinstance(context, int) and config.solve.sampling.max_tokens >= context:
        report.errors.append(f"solve.sampling.max_tokens {config.solve.sampling.max_tokens} "
                             f"leaves no room for the prompt in a {context}-token context")


def _check_profile(config: Config, server: Server, report: Report) -> None:
    from aimo_infer.solve.prompts import load_profile

    try:
        profile = load_profile(config.solve.prompt)
    except ValueError as exc:
        report.errors.append(f"solve.prompt: {exc}")
        return
    if profile.tool_format.name != "harmony":
        if config.engine.name == "openai" and not config.engine.options.get("tokenizer_path"):
            report.notes.append(f"prompt profile {profile.name!r} on engine 'openai' without "
                                "engine.options.tokenizer_path renders plain ChatML, not the "
                                "model's chat template")
        return
    for package, pip in (("openai_harmony", "openai-harmony"), ("bpe_openai", "bpe-openai")):
        if importlib.util.find_spec(package) is None:
            report.errors.append(f"prompt profile 'harmony' needs {pip}: "
                                 "pip install 'aimo-infer[harmony]'")
    name = config.engine.name
    if name not in TOKEN_IO_ENGINES:
        report.errors.append(f"prompt profile 'harmony' needs token-in/token-out; engine {name!r} "
                             f"has none here: use one of {list(TOKEN_IO_ENGINES)}")
        return
    if name == "openai":
        flavour = config.engine.options.get("server", "auto")
        kind = server.get("kind", "vllm") if isinstance(server, dict) else None
        if flavour != "auto" and flavour not in TOKEN_IO_SERVERS:
            report.errors.append(f"prompt profile 'harmony' over engine 'openai' needs a server "
                                 f"with token ids ({list(TOKEN_IO_SERVERS)}), got {flavour!r}")
        elif kind is not None and kind not in TOKEN_IO_SERVERS:
            report.errors.append(f"prompt profile 'harmony' needs token ids: model_server.kind "
                                 f"{kind!r} has none; use vllm")
        elif flavour == "auto" and kind is None:
            report.notes.append("engine 'openai': the server must be vLLM for the harmony "
                                "profile (set engine.options.server = \"vllm\" to check it here)")
    from aimo_infer.vocab import ENV_VAR, is_prepared, vocab_dir

    if not is_prepared(vocab_dir()):
        report.notes.append(f"the harmony vocabulary is not in {vocab_dir()} yet: run "
                            f"'aimo-infer models prepare' (or set {ENV_VAR}); it is unpacked "
                            "from bpe-openai at start otherwise")


def _check_paths(config: Config, server: Server, report: Report) -> None:
    paths: list[tuple[str, str | None]] = [("submission.trace", None)]
    if config.engine.name not in ("openai",) and config.engine.model:
        paths.append(("engine.model", config.engine.model))
    if isinstance(server, dict) and isinstance(server.get("model"), str):
        paths.append(("model_server.model", server["model"]))
    for key, value in paths:
        if key == "submission.trace":
            trace = config.submission.trace
            if trace is None:
                continue
            parent = Path(trace).parent
            if trace.startswith(KAGGLE_ROOT):
                report.notes.append(f"{key}: {trace} is written on Kaggle")
            elif not parent.is_dir():
                report.errors.append(f"{key}: folder {parent} does not exist")
            continue
        assert value is not None
        if value.startswith(KAGGLE_ROOT):
            if not Path(value).exists():
                report.notes.append(f"{key}: {value} exists only on Kaggle (not checked here)")
        elif not Path(value).expanduser().exists():
            report.errors.append(f"{key}: {value} not found")


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, dict) and value:
        rows: list[tuple[str, Any]] = []
        for key, item in value.items():
            rows += _flatten(f"{prefix}.{key}" if prefix else str(key), item)
        return rows
    return [(prefix, value)]


def _rows(config: Config, server: Server, given: set[str]) -> list[tuple[str, str, str]]:
    """Every resolved setting (defaults marked) and the model server's; TIR limits that the
    harmony profile does not read are left out so the table shows one recipe."""
    harmony = config.solve.prompt == "harmony"
    skip = ("solve.tir.max_code_calls", "solve.tir.code_timeout_s") if harmony \
        else ("solve.harmony.",)
    rows = []
    for key, value in _flatten("", config):
        if key.startswith(skip):
            continue
        rows.append((key, _show(value), "" if key in given else "default"))
    for key, item in _flatten(MODEL_SERVER_TABLE, server or {}):
        rows.append((key, _show(item), "read by serve-model"))
    order = ["engine", "model_server", "solve", "budget", "submission"]
    rows.sort(key=lambda r: order.index(r[0].split(".")[0]) if r[0].split(".")[0] in order else 9)
    return rows


def _show(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(" ".join(pair) for pair in _flag_pairs(value)) or "[]"
    return repr(value) if isinstance(value, str) and value == "" else str(value)


def _flag_pairs(args: list[Any]) -> list[list[str]]:
    """Command-line flags with their values, one flag per line."""
    lines: list[list[str]] = []
    for arg in map(str, args):
        if arg.startswith("-") or not lines:
            lines.append([arg])
        else:
            lines[-1].append(arg)
    return lines


def print_report(path: Path, report: Report) -> None:
    import shutil

    from rich.console import Console
    from rich.table import Table

    # At least 120 columns (also in a pipe or CI log) so a setting and its value share a line.
    console = Console(width=max(120, shutil.get_terminal_size((120, 24)).columns))
    if report.rows:
        table = Table(title=f"recipe: {path}", show_lines=False)
        table.add_column("setting", style="bold", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("remark", style="dim", overflow="fold")
        for key, value, remark in report.rows:
            table.add_row(key, value, remark)
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    for error in report.errors:
        print(f"error: {error}", file=sys.stderr)
    if not report.errors:
        console.print(f"ok: {path} is valid", highlight=False, markup=False)


def add_check_config_parser(subparsers: Any) -> argparse.ArgumentParser:
    """``check-config FILE``: validate a config and print the resolved recipe."""
    parser = subparsers.add_parser(
        "check-config", help="validate a config without loading a model; print the recipe")
    parser.add_argument("file", type=Path, help="TOML config (see configs/)")
    parser.set_defaults(func=_cmd_check_config)
    return parser


def _cmd_check_config(args: argparse.Namespace) -> int:
    report = check_config(args.file)
    print_report(args.file, report)
    return 1 if report.errors else 0
