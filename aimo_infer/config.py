"""Configuration: plain dataclasses, one ``Config`` object passed down, loadable from TOML."""

from __future__ import annotations

import dataclasses
import math
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aimo_infer.errors import UserError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(UserError, ValueError):
    """A configuration file or flag is wrong; the message names the key."""


@dataclass
class SamplingConfig:
    """Sampling for every stream; the seed comes from the run seed and the problem id."""

    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    max_tokens: int = 4096  # per stream, over all its segments


@dataclass
class TIRConfig:
    """Tool-integrated reasoning limits (defaults: the winning AIMO-2 entry's Kaggle settings)."""

    max_code_calls: int = 6  # at the limit, a further code block ends the stream
    code_timeout_s: float = 2.0  # CPU seconds per cell
    code_wall_timeout_s: float = 10.0  # looser wall clock: 12 streams share few cores
    output_max_chars: int = 200  # the model sees head and tail, with a marker between
    code_memory_mb: int = 1024


@dataclass
class EngineConfig:
    """Which engine to run and how; ``options`` go to the adapter untouched."""

    name: str = "llamacpp"
    model: str | None = None  # path or name; None: the engine's default model
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class HarmonyConfig:
    """The ``harmony`` prompt profile (gpt-oss, aimo_infer/solve/harmony.py): rendering and the
    python tool's limits (defaults: the public AIMO-3 notebooks)."""

    reasoning_effort: str = "high"  # low | medium | high
    system_prompt: str = ""  # replaces the model identity line of the system message
    tool_description: str = ""  # the python tool's description ("": openai-harmony's own)
    notebook: bool = True  # show the value of a cell's last expression, as Jupyter does
    max_tool_turns: int = 128  # a further python call ends the stream
    code_timeout_s: float = 6.0  # CPU seconds per python call


@dataclass
class ConfidenceConfig:
    """Confidence from the model's token logprobs (aimo_infer/solve/confidence.py): how it is
    measured, how selection rules weigh it and when a stream stops on it (default: never)."""

    logprobs: int = 0  # top-k per token; 0: off, or 5 when the select rule or stop needs them
    window: int = 2048  # DeepConf group size (tokens)
    tail: int = 256  # tail entropy over the last N tokens
    entropy_floor: float = 0.01  # select "entropy": weight = 1 / max(mean entropy, floor)
    deepconf_eta: float = 90.0  # select "deepconf": percent of answered streams kept
    stop: str = "none"  # none | deepconf (stop a stream whose window confidence falls low)
    stop_threshold: float | None = None  # None: a percentile of the warmup streams'
    stop_warmup: int = 4
    stop_percentile: float = 10.0


@dataclass
class SolveConfig:
    """How one problem is solved: streams, prompt profile, answer profile, stopping policy."""

    num_streams: int = 12
    run_seed: int = 0
    prompt: str = "tir-fence"  # a profile in aimo_infer/solve/prompt_profiles/
    profile: str = "aimo3"  # answer profile: aimo2 | aimo3 | free
    stop_policy: str = "nemo"  # a preset from aimo_infer.solve.policies.PRESETS
    select: str = "majority"  # majority | entropy | vote-then-confidence | deepconf
    stream_timeout_s: float | None = None  # per-stream deadline, on top of the problem's
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    tir: TIRConfig = field(default_factory=TIRConfig)
    harmony: HarmonyConfig = field(default_factory=HarmonyConfig)
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


@dataclass
class BudgetConfig:
    """Time budget (winning entry: 350 s base, at most 210 s from the shared buffer).

    ``preset`` picks the rule (aimo_infer/kaggle/budget.py): nemo (base + capped bank draw)
    or aimo3 (clamp(time_left - (problems_left - 1) x base, base, high_s))."""

    preset: str = "nemo"
    base_s: float = 350.0
    max_extra_s: float = 210.0
    high_s: float = 900.0  # aimo3: the most one problem may get
    total_s: float = 5 * 3600.0
    safety_margin_s: float = 600.0
    min_per_problem_s: float = 30.0
    num_problems: int = 50


@dataclass
class SubmissionConfig:
    """Serving on Kaggle: when the engine loads, watchdog margins, the fallback answer, logs."""

    load: str = "background"  # eager (before serving) | background (first call waits) | first_call
    load_timeout_s: float = 1800.0  # the first call waits at most this long for the engine
    fallback_answer: int = 0  # when no stream states an answer (see aimo_infer/kaggle/predict.py)
    wind_down_s: float = 10.0  # the solve deadline comes this long before the allotment ends
    return_margin_s: float = 2.0  # the watchdog answers this long before the allotment ends
    restart_timeout_s: float = 120.0  # closing a dead engine or sandbox waits at most this long
    trace: str | None = None  # JSONL trace of every problem and call (None: no trace)


@dataclass
class GenSelectConfig:
    """GenSelect: on a split vote the model judges summaries of its own solutions (off by
    default; see aimo_infer/solve/genselect.py)."""

    enabled: bool = False
    k: int = 4  # seeded judgment generations, voted
    max_candidates: int = 16
    per_answer: int = 1  # solutions shown per distinct answer (shortest first)
    summary_tokens: int = 1024  # per solution: its text after the reasoning, else its tail
    max_tokens: int = 4096  # per judgment
    min_time_left_s: float = 30.0  # runs only when the deadline leaves at least this
    max_s: float = 120.0  # at most this long, deadline or not
    leader_share_below: float = 0.6  # split: the leader has less than this share of the votes
    margin_at_most: int = 1  # or the top two are this many votes apart or closer (-1: off)


@dataclass
class Config:
    """Everything a run needs."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)
    genselect: GenSelectConfig = field(default_factory=GenSelectConfig)


def dataclass_from_table(
    cls: type, data: Any, where: str = "", error: type[ValueError] = ConfigError,
    ignore_unknown: bool = False,
) -> Any:
    """Build dataclass ``cls`` from a TOML table (nested dataclasses too), rejecting unknown
    keys (unless ``ignore_unknown``: a record written by another version) and values of the
    wrong type with ``error`` naming the key (``where``: its prefix)."""
    if not isinstance(data, dict):
        raise error(f"{where or 'top level'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if ignore_unknown:
        data = {k: v for k, v in data.items() if k in known}
    elif unknown:
        raise error(f"{where or 'top level'}: unknown key(s) {unknown}; known: {sorted(known)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise error(f"{where or 'top level'}: missing key(s) {missing}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_table(hint, value, path, error,  # type: ignore[arg-type]
                                               ignore_unknown)
        elif not _fits(hint, value):
            raise error(f"{path}: expected {_type_name(hint)}, got {value!r}")
        else:
            kwargs[key] = float(value) if hint is float else value
    return cls(**kwargs)


def _fits(hint: Any, value: Any) -> bool:
    """Whether a TOML value fits a type hint (bool is not an int; an int is a float)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(arg, value) for arg in typing.get_args(hint))
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if origin is dict:
        return isinstance(value, dict)
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_fits(item, v) for v in value)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


# The ranges a setting accepts, by dotted key. A TOML file and the command-line flags are
# checked by the same rules (``validate_config``, ``check_setting``), so no value that a flag
# refuses can come in through a file.
PROFILES: tuple[str, ...] = ("aimo2", "aimo3", "free")  # as aimo_infer.solve.answer.PROFILES
LOAD_MODES: tuple[str, ...] = ("eager", "background", "first_call")
MAX_STREAMS = 256  # far above any engine's batch: a typo (1200 for 12) fails at once


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> bool:
    return _finite(value) and value > 0


def _non_negative(value: Any) -> bool:
    return _finite(value) and value >= 0


def _between(low: float, high: float) -> Callable[[Any], bool]:
    return lambda value: _finite(value) and low <= value <= high


def _one_of(names: tuple[str, ...]) -> Callable[[Any], bool]:
    return lambda value: value in names


Rule = tuple[Callable[[Any], bool], str]
SECONDS: Rule = (_positive, "finite and > 0 (seconds)")
MARGIN: Rule = (_non_negative, "finite and >= 0 (seconds)")
AT_LEAST_ONE: Rule = (lambda v: _finite(v) and v >= 1, ">= 1")
# Names the config accepts for rules defined in aimo_infer/solve (which imports them from here).
SELECT_RULES: tuple[str, ...] = ("majority", "entropy", "vote-then-confidence", "deepconf")
CONFIDENCE_STOPS: tuple[str, ...] = ("none", "deepconf")

RULES: dict[str, Rule] = {
    "solve.num_streams": (_between(1, MAX_STREAMS), f">= 1 and <= {MAX_STREAMS}"),
    "solve.select": (_one_of(SELECT_RULES), f"one of {', '.join(SELECT_RULES)}"),
    "solve.confidence.stop": (_one_of(CONFIDENCE_STOPS), f"one of {', '.join(CONFIDENCE_STOPS)}"),
    "solve.confidence.logprobs": (_between(0, 20), ">= 0 and <= 20 (0: off)"),
    "solve.confidence.window": (_between(1, 1 << 20), ">= 1 (tokens)"),
    "solve.confidence.tail": (_between(1, 1 << 20), ">= 1 (tokens)"),
    "solve.profile": (_one_of(PROFILES), f"one of {', '.join(PROFILES)}"),
    "solve.stream_timeout_s": (lambda v: v is None or _positive(v), "finite and > 0 (seconds)"),
    "solve.sampling.temperature": (_non_negative, "finite and >= 0"),
    "solve.sampling.top_p": (lambda v: _finite(v) and 0 < v <= 1, "> 0 and <= 1"),
    "solve.sampling.top_k": (_non_negative, ">= 0 (0: off)"),
    "solve.sampling.min_p": (_between(0, 1), ">= 0 and <= 1"),
    "solve.sampling.max_tokens": AT_LEAST_ONE,
    "solve.tir.max_code_calls": (_non_negative, ">= 0"),
    "solve.tir.code_timeout_s": SECONDS,
    "solve.tir.code_wall_timeout_s": SECONDS,
    "solve.tir.output_max_chars": AT_LEAST_ONE,
    "solve.tir.code_memory_mb": AT_LEAST_ONE,
    "solve.harmony.reasoning_effort": (_one_of(("low", "medium", "high")),
                                       "one of low, medium, high"),
    "solve.harmony.max_tool_turns": (_non_negative, ">= 0"),
    "solve.harmony.code_timeout_s": SECONDS,
    "budget.base_s": SECONDS,
    "budget.max_extra_s": MARGIN,
    "budget.total_s": SECONDS,
    "budget.safety_margin_s": MARGIN,
    "budget.min_per_problem_s": MARGIN,
    "budget.num_problems": AT_LEAST_ONE,
    "submission.load": (_one_of(LOAD_MODES), f"one of {', '.join(LOAD_MODES)}"),
    "submission.load_timeout_s": SECONDS,
    "submission.wind_down_s": MARGIN,
    "submission.return_margin_s": MARGIN,
    "submission.restart_timeout_s": SECONDS,
    "genselect.k": (_between(1, 64), ">= 1 and <= 64"),
    "genselect.max_candidates": (_between(2, 16), ">= 2 and <= 16"),
    "genselect.per_answer": (_between(1, 16), ">= 1 and <= 16"),
    "genselect.summary_tokens": (_between(64, 1 << 20), ">= 64"),
    "genselect.max_tokens": AT_LEAST_ONE,
    "genselect.min_time_left_s": MARGIN,
    "genselect.max_s": SECONDS,
    "genselect.leader_share_below": (_between(0, 1), ">= 0 and <= 1 (0: off)"),
    "genselect.margin_at_most": (lambda v: _finite(v) and v >= -1, ">= -1 (-1: off)"),
}


def check_setting(key: str, value: Any, name: str | None = None) -> None:
    """Raise ``ConfigError`` when ``value`` is out of range for setting ``key`` (``name``: how
    the user spelled it, e.g. ``--streams``; default the key)."""
    accepts, what = RULES[key]
    if not accepts(value):
        raise ConfigError(f"{name or key} must be {what}, got {value!r}")


def validate_config(config: Config) -> Config:
    """Every setting with a rule checked; the first out-of-range one raises ``ConfigError``."""
    for key in RULES:
        value: Any = config
        for part in key.split("."):
            value = getattr(value, part)
        check_setting(key, value)
    return config


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a ``Config`` from nested dicts (the shape of the TOML file), range-checked."""
    return validate_config(dataclass_from_table(Config, data))


def read_toml(path: Path, what: str, error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """A TOML file as a table; a missing or malformed file raises ``error`` naming it."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from exc


MODEL_SERVER_TABLE = "model_server"


def load_config(path: str | Path | None) -> Config:
    """Load a TOML config file; None gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    data = read_toml(p, "config file", ConfigError)
    # A recipe may also hold the model server that the launcher starts (``aimo-infer
    # serve-model``, which checks that table); the harness itself does not read it.
    data.pop(MODEL_SERVER_TABLE, None)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
