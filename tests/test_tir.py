import pytest

from aimo_infer.solve.tir import (
    FENCE,
    TOOL_CALL,
    CodeBlockWatcher,
    execution_feedback,
    find_code_block,
    format_output,
    loose_code_block,
    output_markers,
    shorten_traceback,
    truncate_middle,
)
from sandbox.api import ExecResult


def test_fence_block_found_only_when_closed() -> None:
    text = "Let us compute.\n```python\nprint(1+1)\n"
    assert find_code_block(text, FENCE) is None
    text += "```"
    block = find_code_block(text, FENCE)
    assert block is not None
    assert block.code == "print(1+1)\n"
    assert text[block.end :] == ""


def test_fence_language_tag_and_inline_backticks() -> None:
    text = "Use `x`.\n```python3\nx = '```'\ny = 2\n```\nmore"
    block = find_code_block(text, FENCE)
    assert block is not None
    assert block.code == "x = '```'\ny = 2\n"
    assert text[block.end :] == "\nmore"


def test_toolcall_block_strips_inner_fences() -> None:
    text = "<tool_call>\n```python\nprint(3)\n```\n</tool_call> tail"
    block = find_code_block(text, TOOL_CALL)
    assert block is not None
    assert block.code == "print(3)\n"
    assert text[block.end :] == " tail"


def test_watcher_finds_block_split_across_deltas() -> None:
    deltas = ["Now ", "``", "`pyth", "on\npr", "int(5)\n`", "`", "`\n```output"]
    watcher = CodeBlockWatcher(FENCE)
    text, found = "", None
    for i, d in enumerate(deltas):
        text += d
        found = watcher.check(text, d)
        if found:
            assert i == 6  # the moment the third closing backtick arrives
            break
    assert found is not None and found.code == "print(5)\n"


def test_watcher_starts_after_handled_blocks() -> None:
    first = "```python\na=1\n```\n```output\n\n```\n"
    watcher = CodeBlockWatcher(FENCE, len(first))
    text = first + "then `"
    assert watcher.check(text, "then `") is None


def test_truncate_middle_keeps_head_and_tail() -> None:
    text = "".join(str(i % 10) for i in range(1000))
    cut = truncate_middle(text, 200)
    assert cut.startswith(text[:100])
    assert cut.endswith(text[-66:])
    assert "<output cut>" in cut
    assert truncate_middle("short", 200) == "short"


def test_shorten_traceback_keeps_source_line_and_error() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "<cell>", line 3, in <module>\n'
        "    print(undefined_name)\n"
        "NameError: name 'undefined_name' is not defined\n"
    )
    short = shorten_traceback(tb)
    assert "File" not in short
    assert short.endswith("NameError: name 'undefined_name' is not defined")
    assert "print(undefined_name)" in short


@pytest.mark.parametrize(
    ("status", "expected"),
    [("timeout", "Timed out"), ("memory", "Memory limit exceeded"), ("crashed", "Crashed")],
)
def test_limit_statuses_are_named(status: str, expected: str) -> None:
    result = ExecResult(status, "partial\n", "", 2.0)  # type: ignore[arg-type]
    assert execution_feedback(result, 200) == f"partial\n{expected}"


def test_feedback_combines_stdout_and_short_error() -> None:
    result = ExecResult(
        "error", "before\n",
        'Traceback (most recent call last):\n  File "x", line 1\nZeroDivisionError: division by zero\n',
        0.01,
    )
    assert execution_feedback(result, 200) == "before\nZeroDivisionError: division by zero"
    assert format_output("42") == "\n```output\n42\n```\n"


def test_output_markers_are_the_stops_that_are_not_a_close() -> None:
    assert output_markers(FENCE) == ("```output",)
    assert output_markers(TOOL_CALL) == ()  # its stop closes a code block


@pytest.mark.parametrize(
    ("text", "code"),
    [
        pytest.param("Run:\n```py\nprint(5)\n```\n", "print(5)\n", id="py"),
        pytest.param("```python3\nx = 1\nprint(x)\n```\n\n", "x = 1\nprint(x)\n", id="python3"),
        pytest.param("```py\na\n```\nthen\n```ipython\nb\n```", "b\n", id="last-block"),
        pytest.param("```text\nhello\n```\n", None, id="not-python"),
        pytest.param("```\nprint(1)\n```\n", None, id="untagged"),
        pytest.param("```py\nprint(1)\n```\nand prose after it\n", None, id="prose-after"),
        pytest.param("I just know it.\n", None, id="no-block"),
    ],
)
def test_loose_code_block_ends_the_span(text: str, code: str | None) -> None:
    block = loose_code_block(text, 0, len(text))
    assert (block.code if block else None) == code
    if block is not None:
        assert text[block.start:].startswith("```") and text[: block.end].endswith("```")
