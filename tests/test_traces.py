"""Append-only JSONL files (traces, dry-run results) survive a kill mid-write."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aimo_infer.traces import TraceWriter, read_jsonl_tolerant, read_trace, repair_torn_tail

WHOLE = '{"event": "a", "n": 1}\n{"event": "b", "n": 2}\n'


@pytest.mark.parametrize(("tail", "after"), [
    ("", WHOLE),  # nothing torn: untouched
    ('{"event": "c", "te', WHOLE),  # torn mid-object: cut off
    ('{"event": "c"}', WHOLE + '{"event": "c"}\n'),  # whole but unterminated: completed
    ("12", WHOLE),  # a torn number is not a whole event
    ("\xff\xfe garbage", WHOLE),
])
def test_repair_ends_the_file_on_a_line_boundary(tmp_path: Path, tail: str, after: str) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(WHOLE + tail)
    repair_torn_tail(path)
    assert path.read_text() == after


def test_repair_reads_only_the_tail_of_a_long_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    long_event = json.dumps({"event": "x", "text": "y" * 200_000})
    path.write_text(WHOLE + long_event[:150_000])  # torn past several read chunks
    repair_torn_tail(path)
    assert path.read_text() == WHOLE
    path.write_text(long_event)  # one whole line, no newline, no line before it
    repair_torn_tail(path)
    assert path.read_text() == long_event + "\n"


def test_repair_leaves_a_missing_or_empty_file(tmp_path: Path) -> None:
    repair_torn_tail(tmp_path / "none.jsonl")
    assert not (tmp_path / "none.jsonl").exists()
    (tmp_path / "empty.jsonl").write_text("")
    repair_torn_tail(tmp_path / "empty.jsonl")
    assert (tmp_path / "empty.jsonl").read_text() == ""


def test_a_writer_reopened_after_a_kill_does_not_glue_lines(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    with TraceWriter(path) as tracer:
        tracer.write("first", n=1)
    with path.open("a") as fh:
        fh.write('{"event": "second", "n"')  # killed mid-write
    with TraceWriter(path) as tracer:
        tracer.write("third", n=3)
    assert [e["event"] for e in read_trace(path)] == ["first", "third"]


def test_readers_skip_only_an_unterminated_torn_last_line(tmp_path: Path) -> None:
    path = tmp_path / "t.jsonl"
    path.write_text(WHOLE + '{"event": "c", "te')
    assert [n for n, _ in read_jsonl_tolerant(path, "an event")] == [1, 2]
    path.write_text(WHOLE + '{"event": "c"}')  # whole: counted, as the repair keeps it
    assert [e["event"] for e in read_trace(path)] == ["a", "b", "c"]
    path.write_text('{"event": "a"}\n{"event": \n{"event": "c"}\n')
    with pytest.raises(ValueError, match=r"t\.jsonl:2: not a JSON event"):
        list(read_trace(path))
    path.write_text('{"event": "a"}\n{"event": \n')  # a terminated bad line is not torn
    with pytest.raises(ValueError, match=r"t\.jsonl:2: not a JSON event"):
        list(read_trace(path))
    path.write_bytes(b'{"event": "a"}\n\xff\n')
    with pytest.raises(ValueError, match=r"t\.jsonl: not UTF-8 text"):
        list(read_trace(path))
