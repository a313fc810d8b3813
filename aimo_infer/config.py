"""Configuration: plain dataclasses, one ``Config`` object passed down, loadable from TOML."""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class ConfigError(ValueError):
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
    confidence: ConfidenceConfig = field(default_factory=ConfidenceConfig)


@dataclass
class BudgetConfig:
    """Time budget (winning entry: 350 s base, at most 210 s from the shared buffer)."""

    base_s: float = 350.0
    max_extra_s: float = 210.0
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
class Config:
    """Everything a run needs."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    solve: SolveConfig = field(default_factory=SolveConfig)
    budget: BudgetConfig = field(default_factory=BudgetConfig)
    submission: SubmissionConfig = field(default_factory=SubmissionConfig)


def dataclass_from_table(
    cls: type, data: Any, where: str = "", error: type[ValueError] = ConfigError
) -> Any:
    """Build dataclass ``cls`` from a TOML table (nested dataclasses too), rejecting unknown
    keys and values of the wrong type with ``error`` naming the key (``where``: its prefix)."""
    if not isinstance(data, dict):
        raise error(f"{where or 'top level'}: expected a table, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{where or 'top level'}: unknown key(s) {unknown}; known: {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        hint = hints[key]
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(hint):
            kwargs[key] = dataclass_from_table(hint, value, path, error)  # type: ignore[arg-type]
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


def config_from_dict(data: dict[str, Any]) -> Config:
    """Build a ``Config`` from nested dicts (the shape of the TOML file)."""
    return dataclass_from_table(Config, data)


def read_toml(path: Path, what: str, error: type[ValueError] = ConfigError) -> dict[str, Any]:
    """A TOML file as a table; a missing or malformed file raises ``error`` naming it."""
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{path}: not valid TOML ({exc})") from exc


def load_config(path: str | Path | None) -> Config:
    """Load a TOML config file; None gives the defaults."""
    if path is None:
        return Config()
    p = Path(path)
    data = read_toml(p, "config file", ConfigError)
    try:
        return config_from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{p}: {exc}") from exc
