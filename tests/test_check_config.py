"""``aimo-infer check-config``: a config validated without loading a model, the recipe printed."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest

from aimo_infer.check_config import check_config
from aimo_infer.cli import main
from aimo_infer.config import tomllib

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "kaggle-aimo3-gptoss.toml"


def write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "c.toml"
    if isinstance(data, str):
        path.write_text(data)
        return path
    lines: list[str] = []

    def emit(prefix: str, table: dict[str, Any]) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if prefix:
            lines.append(f"[{prefix}]")
        for key, value in scalars.items():
            lines.append(f"{key} = {_toml(value)}")
        for key, value in table.items():
            if isinstance(value, dict):
                emit(f"{prefix}.{key}" if prefix else key, value)

    emit("", data)
    path.write_text("\n".join(lines) + "\n")
    return path


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def recipe() -> dict[str, Any]:
    return tomllib.loads(RECIPE.read_text())


@pytest.mark.skipif(importlib.util.find_spec("httpx") is None
                    or importlib.util.find_spec("openai_harmony") is None,
                    reason="needs the openai and harmony extras")
def test_the_aimo3_recipe_passes_and_prints_one_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(RECIPE)]) == 0
    out = capsys.readouterr().out
    assert f"recipe: {RECIPE}" in out and "ok:" in out
    for key, value in [("engine.name", "openai"), ("solve.prompt", "harmony"),
                       ("solve.num_streams", "8"), ("solve.sampling.min_p", "0.02"),
                       ("solve.harmony.code_timeout_s", "6.0"),
                       ("solve.harmony.max_tool_turns", "128"),
                       ("budget.preset", "aimo3"), ("solve.stop_policy", "agree=4,leader"),
                       ("solve.select", "entropy"), ("solve.confidence.logprobs", "5")]:
        line = next(ln for ln in out.splitlines() if f" {key} " in ln)
        assert f" {value} " in line, line
    assert "--enable-prefix-caching" in out.replace("\n", "")
    assert "solve.tir.max_code_calls" not in out  # harmony reads its own limits


def test_the_recipe_s_selection_keys_are_checked_and_shown(tmp_path: Path) -> None:
    """The confidence-aware selection and stop keys resolve into the config and the table."""
    data = recipe()
    data["solve"].update(stop_policy="agree=4,leader", select="entropy",
                         confidence={"logprobs": 5})
    report = check_config(write(tmp_path, data))
    assert report.errors == [], report.errors
    shown = {key: value for key, value, _ in report.rows}
    assert (shown["solve.select"], shown["solve.confidence.logprobs"],
            shown["solve.stop_policy"]) == ("entropy", "5", "agree=4,leader")
    remarks = {key: remark for key, _, remark in report.rows}
    assert remarks["model_server.kind"] == "read by serve-model"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["engine"].update(name="hf"), "needs token-in/token-out"),
        (lambda d: d["engine"]["options"].update(server="llama-cpp-python"), "token ids"),
        (lambda d: d["model_server"].update(kind="llamacpp"), "has none; use vllm"),
        (lambda d: d["solve"]["sampling"].update(min_p=1.5), "min_p must be >= 0 and <= 1"),
        (lambda d: d["solve"]["harmony"].update(reasoning_effort="max"), "reasoning_effort"),
        (lambda d: d["solve"]["sampling"].update(max_tokens=70000), "leaves no room"),
        (lambda d: d["engine"]["options"].update(context_length=32768), "--max-model-len"),
        (lambda d: d["solve"].update(stop_policy="agree=x,leader"), "stop_policy"),
        (lambda d: d["solve"].update(select="best"), "solve.select"),
        (lambda d: d["budget"].update(preset="fast"), "budget.preset must be one of"),
        (lambda d: d["budget"].update(high_s=100.0), "budget.high_s must be >= budget.base_s"),
        (lambda d: d["model_server"].update(host="0.0.0.0"), "loopback"),
        (lambda d: d["solve"].update(prompt="nope"), "unknown prompt profile"),
        (lambda d: d["solve"].update(streams=8), "unknown key(s) ['streams']"),
        (lambda d: d["submission"].update(trace="/nonexistent/dir/t.jsonl"), "does not exist"),
        (lambda d: d["engine"].update(name="replay", model="missing-trace.jsonl"), "not found"),
    ],
)
def test_a_wrong_recipe_fails_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: Any, message: str
) -> None:
    data = recipe()
    change(data)
    path = write(tmp_path, data)
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())


def test_a_missing_engine_extra_names_the_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "httpx" else real(name, *a))
    report = check_config(write(tmp_path, recipe()))
    assert "engine 'openai' needs httpx: pip install 'aimo-infer[openai]'" in report.errors


def test_unreadable_files_fail_in_one_line(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(tmp_path / "none.toml")]) == 1
    assert "config file not found" in capsys.readouterr().err
    assert main(["check-config", str(write(tmp_path, "[solve\n"))]) == 1
    assert "not valid TOML" in capsys.readouterr().err


def test_the_shipped_configs_parse(tmp_path: Path) -> None:
    """Every shipped config passes, or fails only on an engine extra not installed here."""
    for path in sorted(RECIPE.parent.glob("*.toml")):
        report = check_config(path)
        assert report.config is not None, (path, report.errors)
        assert all("pip install" in e for e in report.errors), (path, report.errors)
