"""Problem sets for dry runs: the bundled sets by name, or any JSONL/CSV with ``id, problem``.

Every error is one line naming the file (and line) at fault, so a dry run fails before it
starts instead of halfway through.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aimo_infer.errors import UserError
from aimo_infer.solve.ranges import in_range

DATA_DIR = Path(__file__).resolve().parent.parent / "data"

# name -> (file in aimo_infer/data, the answer profile that grades its answers faithfully)
BUNDLED: dict[str, tuple[str, str]] = {
    # 93 of the 256 answers are not integers, 28 exceed 999: never reduce them.
    "comp-math": ("comp-math-24-25.jsonl", "free"),
    # integer answers, but negative ones and some above 99999 are possible (HMMT).
    "comp-math-int": ("comp-math-24-25.int.jsonl", "free"),
    # AIMO answers: integers in 0-99999.
    "aimo-reference": ("aimo-reference.jsonl", "aimo3"),
    # AMC has a negative answer and two above 999.
    "holdout": ("holdout.jsonl", "free"),
}


class DatasetError(UserError, ValueError):
    """A problem set cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Problem:
    """One problem to solve; ``answer`` is the reference as text (None when unknown)."""

    id: str
    problem: str
    answer: str | None = None
    source: str = ""  # the set it came from (the file name when the file has no source column)


@dataclass(frozen=True)
class Dataset:
    """Problems in file order, where they came from, and the profile that suits them."""

    name: str
    path: Path
    problems: tuple[Problem, ...]
    profile: str

    @property
    def sources(self) -> list[str]:
        return sorted({p.source for p in self.problems})

    @property
    def digest(self) -> str:
        """A fingerprint of the problems (ids, texts, answers, sources): two files with the
        same name but other problems are told apart, a copied file is recognised."""
        h = hashlib.sha256()
        for p in self.problems:
            h.update(json.dumps([p.id, p.problem, p.answer, p.source]).encode() + b"\n")
        return h.hexdigest()[:16]


def load_dataset(name_or_path: str) -> Dataset:
    """A bundled set by name (``comp-math``, ``comp-math-int``, ``aimo-reference``,
    ``holdout``) or a ``.jsonl``/``.csv`` file."""
    if name_or_path in BUNDLED:
        filename, profile = BUNDLED[name_or_path]
        path = DATA_DIR / filename
        return Dataset(name_or_path, path, tuple(_read_jsonl(path)), profile)
    path = Path(name_or_path)
    if not path.is_file():
        names = ", ".join(BUNDLED)
        raise DatasetError(f"dataset not found: {name_or_path} (not a file, nor one of {names})")
    if path.suffix.lower() == ".csv":
        problems = _read_csv(path)
    elif path.suffix.lower() in (".jsonl", ".json"):
        problems = _read_jsonl(path)
    else:
        raise DatasetError(f"{path}: unknown dataset format (use .jsonl or .csv)")
    return Dataset(path.stem, path, tuple(problems), suggested_profile(problems))


def suggested_profile(problems: Iterable[Problem]) -> str:
    """``aimo3`` when every known answer is an integer in 0-99999, else ``free``."""
    for p in problems:
        if p.answer is None:
            continue
        text = p.answer.strip()
        if not text.isdigit() or not in_range(int(text), "aimo3"):
            return "free"
    return "aimo3"


def select(
    dataset: Dataset,
    limit: int | None = None,
    ids: Sequence[str] | None = None,
    sources: Sequence[str] | None = None,
) -> list[Problem]:
    """The problems to run: those with the given sources and ids, the first ``limit`` of them."""
    problems = list(dataset.problems)
    if sources:
        known = set(dataset.sources)
        unknown = [s for s in sources if s not in known]
        if unknown:
            hint = (f" ({unknown[0]} is a dataset: pass it as the dataset argument)"
                    if unknown[0] in BUNDLED else "")
            raise DatasetError(f"{dataset.path}: unknown source {unknown[0]!r}; sources: "
                               f"{', '.join(dataset.sources)}{hint}")
        problems = [p for p in problems if p.source in set(sources)]
    if ids:
        by_id = {p.id: p for p in problems}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise DatasetError(f"{dataset.path}: no problem with id {missing[0]!r}"
                               + (" among the selected sources" if sources else ""))
        problems = [by_id[i] for i in dict.fromkeys(ids)]
    if limit is not None:
        if limit < 1:
            raise DatasetError(f"--limit must be >= 1, got {limit}")
        problems = problems[:limit]
    return problems


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for every non-empty line; errors name the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except FileNotFoundError as exc:
        raise DatasetError(f"dataset not found: {path}") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: cannot read ({exc})") from exc
    rows: list[tuple[int, dict[str, Any]]] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{path}:{number}: not a JSON object ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{number}: expected a JSON object, got "
                               f"{type(row).__name__}")
        rows.append((number, row))
    return rows


def _read_jsonl(path: Path) -> list[Problem]:
    return _problems(path, read_jsonl(path))


def _read_csv(path: Path) -> list[Problem]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as fh:  # a BOM is not in a header
            reader = csv.DictReader(fh)
            header = reader.fieldnames or []
            missing = [c for c in ("id", "problem") if c not in header]
            if missing:
                raise DatasetError(f"{path}:1: missing column {missing[0]!r} (header: "
                                   f"{', '.join(header) or 'empty'})")
            # line numbers: the header is line 1 (multi-line cells make this approximate)
            rows = [(reader.line_num, dict(row)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{path}: cannot read as CSV ({exc})") from exc
    return _problems(path, rows)


def _problems(path: Path, rows: list[tuple[int, dict[str, Any]]]) -> list[Problem]:
    problems: list[Problem] = []
    first_line: dict[str, int] = {}
    for number, row in rows:
        for key in ("id", "problem"):
            value = row.get(key)
            if value is None or (isinstance(value, str) and not value.strip()):
                raise DatasetError(f"{path}:{number}: missing field {key!r}")
        pid = str(row["id"]).strip()
        if pid in first_line:
            raise DatasetError(f"{path}:{number}: duplicate id {pid!r} (first on line "
                               f"{first_line[pid]})")
        first_line[pid] = number
        answer = row.get("answer")
        answer = None if answer is None or str(answer).strip() == "" else str(answer).strip()
        source = str(row.get("source") or "").strip() or path.stem
        problems.append(Problem(pid, str(row["problem"]), answer, source))
    if not problems:
        raise DatasetError(f"{path}: no problems in the file")
    return problems
