"""Problem sets: the bundled ones by name, JSONL/CSV files, filters, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimo_infer.evaluate.datasets import DatasetError, load_dataset, select, suggested_profile
from tests.dryrun_fixtures import synthetic_problems, write_jsonl


@pytest.mark.parametrize(("name", "rows", "profile"), [
    ("comp-math", 256, "free"), ("comp-math-int", 163, "free"),
    ("aimo-reference", 30, "aimo3"), ("holdout", 100, "free"),
])
def test_bundled_sets_load_by_name(name: str, rows: int, profile: str) -> None:
    dataset = load_dataset(name)
    assert len(dataset.problems) == rows
    assert len({p.id for p in dataset.problems}) == rows
    assert dataset.profile == profile
    assert all(p.problem and p.answer for p in dataset.problems)


def test_comp_math_keeps_its_non_integer_answers() -> None:
    problems = load_dataset("comp-math").problems
    non_integer = [p for p in problems if not p.answer.lstrip("-").isdigit()]  # type: ignore[union-attr]
    assert len(non_integer) == 93
    assert suggested_profile(problems) == "free"


def test_filters_source_ids_limit() -> None:
    dataset = load_dataset("comp-math")
    aime25 = select(dataset, sources=["aime25"])
    assert len(aime25) == 30 and {p.source for p in aime25} == {"aime25"}
    assert [p.id for p in select(dataset, limit=5)] == [p.id for p in dataset.problems[:5]]
    ids = [dataset.problems[7].id, dataset.problems[2].id]
    assert [p.id for p in select(dataset, ids=ids)] == ids
    assert len(select(dataset, sources=["aime24", "aime25"], limit=40)) == 40


def test_unknown_source_and_id_name_the_problem() -> None:
    dataset = load_dataset("holdout")
    with pytest.raises(DatasetError, match=r"holdout\.jsonl: unknown source 'aime99'.*aime22"):
        select(dataset, sources=["aime99"])
    with pytest.raises(DatasetError, match="comp-math-int is a dataset: pass it as the dataset"):
        select(load_dataset("comp-math"), sources=["comp-math-int"])
    with pytest.raises(DatasetError, match="no problem with id 'nope'"):
        select(dataset, ids=["nope"])
    with pytest.raises(DatasetError, match="--limit"):
        select(dataset, limit=0)


def test_custom_jsonl_without_answers_or_sources(tmp_path: Path) -> None:
    path = tmp_path / "mine.jsonl"
    path.write_text('{"id": 1, "problem": "2+2?"}\n\n{"id": "b", "problem": "3+3?", '
                    '"answer": 6}\n')
    dataset = load_dataset(str(path))
    assert [(p.id, p.answer, p.source) for p in dataset.problems] == [
        ("1", None, "mine"), ("b", "6", "mine")]
    assert dataset.profile == "aimo3"


def test_custom_csv(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_text('id,problem,answer\na,"What is 1/2 + 1/2, as a fraction?",1\nb,x?,\\frac{1}{3}\n')
    dataset = load_dataset(str(path))
    assert [p.answer for p in dataset.problems] == ["1", "\\frac{1}{3}"]
    assert dataset.problems[0].problem == "What is 1/2 + 1/2, as a fraction?"
    assert dataset.profile == "free"


@pytest.mark.parametrize(("content", "message"), [
    ('{"id": "a", "problem": "x"}\n{"id": "b", "problem": \n', r"bad\.jsonl:2: not a JSON object"),
    ('{"id": "a", "problem": "x"}\n[1, 2]\n', r"bad\.jsonl:2: expected a JSON object"),
    ('{"id": "a", "problem": "x"}\n{"id": "b"}\n', r"bad\.jsonl:2: missing field 'problem'"),
    ('{"id": "a", "problem": "x"}\n{"id": "a", "problem": "y"}\n',
     r"bad\.jsonl:2: duplicate id 'a' \(first on line 1\)"),
    ("\n", r"bad\.jsonl: no problems"),
])
def test_bad_jsonl_names_file_and_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DatasetError, match=message) as info:
        load_dataset(str(path))
    assert "\n" not in str(info.value)


def test_bad_csv_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "bad.csv"
    path.write_text("id,question\na,x\n")
    with pytest.raises(DatasetError, match=r"bad\.csv:1: missing column 'problem'"):
        load_dataset(str(path))
    with pytest.raises(DatasetError, match=r"dataset not found: .*nowhere\.jsonl"):
        load_dataset(str(tmp_path / "nowhere.jsonl"))
    other = tmp_path / "set.txt"
    other.write_text("x")
    with pytest.raises(DatasetError, match="unknown dataset format"):
        load_dataset(str(other))


def test_round_trip_of_a_written_set(tmp_path: Path) -> None:
    problems = synthetic_problems(4, source="mine")
    dataset = load_dataset(str(write_jsonl(tmp_path / "s.jsonl", problems)))
    assert list(dataset.problems) == problems
    assert json.loads((tmp_path / "s.jsonl").read_text().splitlines()[0])["id"] == "p0"


@pytest.mark.parametrize(("name", "body"), [
    ("excel.csv", "id,problem,answer\nb1,What is 2+2?,4\n"),
    ("notepad.jsonl", '{"id": "b1", "problem": "What is 2+2?", "answer": 4}\n'),
])
def test_a_utf8_byte_order_mark_is_read(tmp_path: Path, name: str, body: str) -> None:
    path = tmp_path / name
    path.write_bytes(b"\xef\xbb\xbf" + body.encode())  # as Excel and Notepad save UTF-8
    dataset = load_dataset(str(path))
    assert [(p.id, p.problem, p.answer) for p in dataset.problems] == [
        ("b1", "What is 2+2?", "4")]


def test_a_binary_file_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "set.csv"
    path.write_bytes(b"id,problem\n\x89PNG\xff\xfe\n")
    with pytest.raises(DatasetError, match=r"set\.csv: cannot read as CSV"):
        load_dataset(str(path))
