"""Every shell command in README.md runs as typed: the README cannot drift from the code.

The commands are read from the README's ```bash blocks (``\\`` continuations joined, ``#``
comments dropped) and run in README order in a scratch directory laid out like a fresh clone
(symlinks to the checkout, no ``runs/``). How each kind is checked:

- ``aimo-infer dryrun``: run for real, with a replay engine (scripted answers for the problems
  it selects) appended, so the model is not needed; the run it writes feeds the next commands;
- ``aimo-infer report`` and ``aimo-infer simulate`` on a run: run for real, as typed;
- ``aimo-infer simulate`` on per-sample traces: run for real with ``--draws 2`` appended (the
  default 100 draws over 11 models take half a minute here);
- ``aimo-infer solve``: run for real with the replay engine appended; ``@problem.txt`` is the
  reader's own file, so the test writes one;
- ``aimo-infer models prepare``: parsed and its options checked (a real prepare converts the
  model: minutes);
- ``aimo-infer bundle``: run with ``--dry-run`` appended (prints the plan, downloads nothing);
- ``aimo-infer budget``: run for real (pure arithmetic);
- ``aimo-infer check-config``: run for real (it loads no model);
- ``aimo-infer serve-model``: parsed and its ``[model_server]`` table loaded and checked (it
  would start a GPU model server);
- ``kaggle ...``: the real kaggle CLI without credentials: it must get past its argument parser
  and stop at authentication;
- ``aimo-infer --help`` and ``python SCRIPT --help``: run, exit 0;
- ``python submission.py`` with a config: parsed, the config loaded and checked and the problem
  file read, as the entry point does before it starts the engine;
- ``bash SCRIPT``: the script exists and ``bash -n`` parses it;
- ``python -m pytest``: pytest is importable and the arguments are ones it accepts.

A command of a kind not listed fails the test until a check is added here.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from aimo_infer.cli import build_parser, main
from aimo_infer.config import tomllib
from aimo_infer.evaluate.datasets import Problem
from aimo_infer.evaluate.dryrun import prepare
from aimo_infer.solve.controller import stream_seed
from tests.dryrun_fixtures import scripts_for

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
VENV_BIN = ".venv/bin/"
REPLAY_STREAMS = 12  # the dry run's default streams: every stream has a script


def readme_commands(markdown: str) -> list[str]:
    """The shell commands of the ```bash blocks, one string each, comments and
    continuations resolved."""
    commands: list[str] = []
    for block in re.findall(r"^```bash\n(.*?)^```", markdown, flags=re.S | re.M):
        pending = ""
        for line in block.splitlines():
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            command = shlex.join(shlex.split(pending + line, comments=True))
            pending = ""
            if command:
                commands.append(command)
        if pending.strip():
            raise AssertionError(f"a bash block ends in a continuation: {pending!r}")
    return commands


def test_commands_are_extracted_with_continuations_and_comments() -> None:
    text = ("prose `aimo-infer x`\n```bash\na --x 1   # comment\n# only a comment\n"
            "b \"two words\" \\\n    --y 2 # tail\n```\n```python\nnot_shell()\n```\n")
    assert readme_commands(text) == ["a --x 1", "b 'two words' --y 2"]


def _argv(command: str) -> list[str]:
    argv = shlex.split(command)
    if argv[0].startswith(VENV_BIN):
        argv[0] = argv[0][len(VENV_BIN):]
    return argv


def _run_main(argv: list[str]) -> tuple[int, str]:
    """``aimo-infer ARGV`` in this process: exit code and what it wrote to stderr."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            code = int(exc.code or 0)
    return code, err.getvalue()


def _replay_trace(path: Path, problems: list[Problem]) -> Path:
    """A recorded trace the replay engine serves: every stream of every problem answers."""
    scripts = scripts_for(problems, REPLAY_STREAMS)
    with path.open("w", encoding="utf-8") as fh:
        for p in problems:
            for i in range(REPLAY_STREAMS):
                seed = stream_seed(0, p.id, i)
                seg = scripts[seed][0]
                fh.write(json.dumps({"event": "segment", "problem_id": p.id, "seed": seed,
                                     "text": seg.text, "tokens": seg.tokens,
                                     "finish_reason": "stop"}) + "\n")
    return path


def _replayed(argv: list[str], problems: list[Problem], workdir: Path) -> list[str]:
    trace = _replay_trace(workdir / f"replay-{len(list(workdir.glob('replay-*')))}.jsonl",
                          problems)
    return [*argv, "--engine", "replay", "--model", str(trace), "--prompt", "cot"]


def _check_aimo_infer(argv: list[str], workdir: Path) -> str | None:
    """None when the command works; else why not."""
    args = argv[1:]
    command = args[0] if args else ""
    if command == "dryrun":
        parsed = build_parser().parse_args(args)
        _, order, _, _ = prepare(parsed)
        args = [*_replayed(args, order, workdir), "--quiet"]
    elif command == "solve":
        parsed = build_parser().parse_args(args)
        if parsed.problem.startswith("@"):
            Path(parsed.problem[1:]).write_text("What is 6 * 7?\n", encoding="utf-8")
        args = _replayed(args, [Problem("cli", "x", "42")], workdir)
    elif command == "simulate" and not (Path(args[1]) / "results.jsonl").exists():
        args = [*args, "--draws", "2"]  # per-sample traces
    elif command == "bundle":
        args = [*args, "--dry-run"]
    elif command == "serve-model":  # starts a GPU model server: parse and check its config
        from aimo_infer.kaggle.launcher import load_server_config

        parsed = build_parser().parse_args(args)
        load_server_config(parsed.config)
        return None
    elif command == "models":
        parsed = build_parser().parse_args(args)
        return None if callable(parsed.func) else "no function for the command"
    elif command not in ("--help", "report", "simulate", "budget", "check-config"):
        return f"no check for 'aimo-infer {command}': add one to tests/test_readme.py"
    code, err = _run_main(args)
    return None if code == 0 else f"exit {code}: {err.strip()[-300:]}"


def _check_submission(argv: list[str]) -> str | None:
    from aimo_infer.kaggle.gateway import read_problems
    from aimo_infer.kaggle.serve import build_parser as submission_parser
    from aimo_infer.kaggle.serve import load_submission_config

    args = submission_parser().parse_args(argv[2:])
    load_submission_config(args)
    if args.csv:
        read_problems(Path(args.csv))
    return None


def _check_python(argv: list[str], workdir: Path) -> str | None:
    if argv[1:3] == ["-m", "pytest"]:
        import pytest as _pytest  # noqa: F401  (importable: the command can start)

        unknown = [a for a in argv[3:] if a.startswith("-") and a not in ("-q", "-x", "-m")]
        return f"pytest options not checked: {unknown}" if unknown else None
    script = Path(argv[1])
    if not script.is_file():
        return f"no such script: {script}"
    if "--help" in argv:
        proc = subprocess.run([sys.executable, *argv[1:]], capture_output=True, text=True,
                              timeout=120, cwd=workdir)
        return None if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-300:]}"
    if script.name == "submission.py":
        return _check_submission(argv)
    return f"no check for 'python {script}': add one to tests/test_readme.py"


def _check_bash(argv: list[str], workdir: Path) -> str | None:
    script = Path(argv[1])
    if not script.is_file():
        return f"no such script: {script}"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True,
                          timeout=60, cwd=workdir)
    return None if proc.returncode == 0 else f"bash -n: {proc.stderr.strip()}"


def _check_entry_point(argv: list[str], workdir: Path) -> str | None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    if scripts.get("aimo-infer") != "aimo_infer.cli:main":
        return "pyproject.toml does not install the aimo-infer command"
    return _check_aimo_infer(argv, workdir)


def _check_kaggle(argv: list[str], workdir: Path) -> str | None:
    """The real kaggle CLI with no credentials: a command it parses stops at authentication,
    one it does not parse stops in argparse with exit 2 (nothing is uploaded either way)."""
    home = workdir / "no-kaggle-home"
    home.mkdir(exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "KAGGLE_CONFIG_DIR": str(home)}
    code = "import sys; from kaggle.cli import main; sys.argv[0] = 'kaggle'; main()"
    proc = subprocess.run([sys.executable, "-c", code, *argv[1:]], capture_output=True,
                          text=True, timeout=120, cwd=workdir, env=env)
    out = proc.stdout + proc.stderr
    if proc.returncode == 2 or "error:" in out:
        return f"kaggle CLI: {out.strip().splitlines()[-1]}"
    return None if "access_token" in out or "authenticate" in out.lower() else out[-300:]


CHECKS: dict[str, Callable[[list[str], Path], str | None]] = {
    "kaggle": _check_kaggle,
    "aimo-infer": _check_entry_point,
    "python": _check_python,
    "bash": _check_bash,
}


def check_command(command: str, workdir: Path) -> str | None:
    """None when ``command`` works as typed in ``workdir``; else a one-line reason."""
    argv = _argv(command)
    check = CHECKS.get(argv[0])
    if check is None:
        return f"no check for '{argv[0]}' commands: add one to tests/test_readme.py"
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return check(argv, workdir)
    except SystemExit as exc:
        lines = err.getvalue().strip().splitlines()
        return f"argparse exit {exc.code}: {lines[-1] if lines else ''}"
    except Exception as exc:  # the reason goes in the failure message
        return f"{type(exc).__name__}: {exc}"


@pytest.fixture
def fresh_clone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A scratch directory that looks like a clone: the checkout's files, no run outputs."""
    for entry in ROOT.iterdir():
        if entry.name not in ("runs", "bundle", ".git") and not entry.name.startswith(
                (".pytest", ".ruff")):
            (tmp_path / entry.name).symlink_to(entry)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_every_readme_command_runs_as_typed(fresh_clone: Path) -> None:
    commands = readme_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10, commands
    failures = [f"{c}\n    -> {why}" for c in commands
                if (why := check_command(c, fresh_clone)) is not None]
    assert not failures, "README commands that fail:\n" + "\n".join(failures)
    assert (fresh_clone / "runs" / "cm20" / "report.md").is_file()  # the dry run really ran


@pytest.mark.parametrize(("command", "reason"), [
    (".venv/bin/aimo-infer dryrun --source comp-math-int --limit 20 --out runs/x",
     "unknown source 'comp-math-int'"),
    (".venv/bin/aimo-infer solve --streams x", "argparse exit 2: aimo-infer solve: error:"),
    (".venv/bin/aimo-infer dryrun --limit", "argparse exit 2: aimo-infer dryrun: error: argument "
     "--limit: expected one argument"),
    (".venv/bin/aimo-infer nosuch", "no check for 'aimo-infer nosuch'"),
    ("bash scripts/nosuch.sh", "no such script"),
    ("make all", "no check for 'make' commands"),
    ("kaggle datasets create -p bundle/ --dir-mode zipped", "kaggle CLI: "),
    (".venv/bin/aimo-infer serve-model --config configs/cpu-default.toml", "no [model_server]"),
])
def test_a_broken_command_is_caught(fresh_clone: Path, command: str, reason: str) -> None:
    why = check_command(command, fresh_clone)
    assert why is not None and reason in why, why
