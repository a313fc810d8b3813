"""Config values are range-checked by one set of rules, whether they come from TOML or flags."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from aimo_infer.cli import SETTING_FLAGS, build_parser, config_from_args
from aimo_infer.config import (
    MAX_STREAMS,
    PROFILES,
    Config,
    ConfigError,
    load_config,
    validate_config,
)
from aimo_infer.kaggle.launcher import load_server_config

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, toml: str) -> Path:
    path = tmp_path / "c.toml"
    path.write_text(toml)
    return path


@pytest.mark.parametrize(("toml", "message"), [
    ('[solve]\nprofile = "bogus"', "solve.profile must be one of aimo2, aimo3, free, got 'bogus'"),
    ("[solve]\nnum_streams = 0", "solve.num_streams must be >= 1"),
    (f"[solve]\nnum_streams = {MAX_STREAMS + 1}", f"<= {MAX_STREAMS}, got {MAX_STREAMS + 1}"),
    ("[solve]\nstream_timeout_s = 0", "solve.stream_timeout_s must be finite and > 0"),
    ("[solve.sampling]\nmax_tokens = 0", "solve.sampling.max_tokens must be >= 1, got 0"),
    ("[solve.sampling]\ntop_p = 1.5", "solve.sampling.top_p must be > 0 and <= 1"),
    ("[solve.sampling]\ntemperature = nan", "solve.sampling.temperature must be finite"),
    ("[solve.tir]\ncode_timeout_s = inf", "solve.tir.code_timeout_s must be finite and > 0 "
     "(seconds), got inf"),
    ("[solve.tir]\ncode_wall_timeout_s = -1", "solve.tir.code_wall_timeout_s must be finite"),
    ("[budget]\nnum_problems = 0", "budget.num_problems must be >= 1"),
    ("[budget]\nbase_s = nan", "budget.base_s must be finite and > 0"),
    ("[budget]\nmax_extra_s = -5", "budget.max_extra_s must be finite and >= 0"),
    ("[submission]\nload = \"later\"", "submission.load must be one of eager, background"),
    ("[submission]\nrestart_timeout_s = inf", "submission.restart_timeout_s must be finite"),
])
def test_out_of_range_toml_values_name_the_key(tmp_path: Path, toml: str, message: str) -> None:
    path = write(tmp_path, toml)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ") and message in str(info.value)


def test_the_defaults_and_the_shipped_configs_are_in_range() -> None:
    validate_config(Config())
    shipped = sorted((ROOT / "configs").glob("*.toml"))
    assert shipped
    for path in shipped:
        load_config(path)
        if "[model_server]" in path.read_text():
            load_server_config(path)


def test_profile_names_are_the_extractors() -> None:
    from aimo_infer.solve.answer import PROFILES as EXTRACTOR_PROFILES

    assert PROFILES == EXTRACTOR_PROFILES


@pytest.mark.parametrize(("flag", "value", "toml"), [
    ("--streams", "0", "[solve]\nnum_streams = 0"),
    ("--streams", str(MAX_STREAMS + 1), f"[solve]\nnum_streams = {MAX_STREAMS + 1}"),
    ("--max-tokens", "0", "[solve.sampling]\nmax_tokens = 0"),
])
def test_a_flag_and_a_toml_key_meet_the_same_rule(tmp_path: Path, flag: str, value: str,
                                                  toml: str) -> None:
    with pytest.raises(ConfigError) as from_flag:
        config_from_args(build_parser().parse_args(["solve", "x", flag, value]))
    with pytest.raises(ConfigError) as from_file:
        load_config(write(tmp_path, toml))
    flag_text, file_text = str(from_flag.value), str(from_file.value)
    assert flag_text.startswith(f"{flag} must be ")
    assert flag_text.split(" must be ", 1)[1] == file_text.split(" must be ", 1)[1]
    assert flag in SETTING_FLAGS


def test_flags_on_top_of_a_file_are_checked_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[solve]\nnum_streams = 4\n")
    args = build_parser().parse_args(["solve", "x", "--config", str(path), "--streams", "8",
                                      "--max-tokens", "16", "--profile", "free"])
    cfg = config_from_args(args)
    assert (cfg.solve.num_streams, cfg.solve.sampling.max_tokens, cfg.solve.profile) == (
        8, 16, "free")


@pytest.mark.parametrize(("toml", "extra", "message"), [
    ('[solve]\nprofile = "bogus"\n', [], "solve.profile must be one of"),
    ("[solve.tir]\ncode_timeout_s = inf\n", [], "code_timeout_s must be finite and > 0"),
    ("", ["--timeout", "inf"], "--timeout must be finite and > 0"),
    ("", ["--streams", "100000"], f"--streams must be >= 1 and <= {MAX_STREAMS}"),
])
def test_the_command_refuses_in_one_line(tmp_path: Path, toml: str, extra: list[str],
                                         message: str) -> None:
    path = write(tmp_path, toml)
    proc = subprocess.run([sys.executable, "-m", "aimo_infer", "solve", "What is 1+1?",
                           "--config", str(path), "--engine", "replay", "--model",
                           str(tmp_path / "unused.jsonl"), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], proc.stderr
    assert proc.stdout == ""
