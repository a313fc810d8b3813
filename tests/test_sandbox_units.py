"""Pure pieces of the sandbox: output ring, BPF assembler, pid windows, framing, config."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import channel, outbuf, seccomp, sweep
from sandbox.config import SandboxConfig
from sandbox.protocol import FrameReader, ProtocolError, encode


def expected_view(data: bytes, cap: int) -> tuple[bytes, bool]:
    head, tail, _stride = outbuf.layout(cap)
    if len(data) <= head + tail:
        return data, False
    return data[:head] + data[-tail:], True


@settings(max_examples=200, deadline=None)
@given(chunks=st.lists(st.binary(min_size=0, max_size=300), max_size=40),
       cap=st.integers(min_value=64, max_value=400))
def test_output_ring_keeps_head_and_tail(chunks: list[bytes], cap: int) -> None:
    fd = outbuf.create_buffer(cap)
    mem = outbuf.map_buffer(fd, cap)
    writer = outbuf.StreamWriter(mem, 1, cap)
    writer.reset()
    for chunk in chunks:
        writer.write(chunk)
    text, cut = outbuf.read_stream(mem, 1, cap)
    kept, expect_cut = expected_view(b"".join(chunks), cap)
    assert cut == expect_cut
    if cut:
        head = outbuf.layout(cap)[0]
        first, rest = text.split("\n... [", 1)
        assert first == kept[:head].decode("utf-8", "replace")
        assert rest.split("bytes cut] ...\n", 1)[1] == kept[head:].decode("utf-8", "replace")
    else:
        assert text == kept.decode("utf-8", "replace")


def test_output_streams_are_independent_and_reset() -> None:
    fd = outbuf.create_buffer(100)
    mem = outbuf.map_buffer(fd, 100)
    out, err = outbuf.StreamWriter(mem, 0, 100), outbuf.StreamWriter(mem, 1, 100)
    out.write(b"hello")
    err.write(b"oops")
    assert outbuf.read_stream(mem, 0, 100) == ("hello", False)
    assert outbuf.read_stream(mem, 1, 100) == ("oops", False)
    out.reset()
    assert outbuf.read_stream(mem, 0, 100) == ("", False)


def test_assembler_resolves_forward_labels() -> None:
    program = seccomp.assemble([seccomp.Insn(0x15, "yes", "no", 7), "yes",
                                seccomp.Insn(0x06, 0, 0, 1), "no", seccomp.Insn(0x06, 0, 0, 2)])
    first = struct.unpack("<HBBI", program[:8])
    assert first == (0x15, 0, 1, 7)
    assert len(program) == 24


def test_assembler_rejects_backward_jumps() -> None:
    with pytest.raises(ValueError, match="out of range"):
        seccomp.assemble(["top", seccomp.Insn(0x15, "top", 0, 1)])


def test_x86_64_filter_checks_the_architecture_first() -> None:
    program = seccomp.x86_64_program()
    assert len(program) % 8 == 0
    code, _jt, jf, k = struct.unpack("<HBBI", program[8:16])
    assert (code, k) == (0x15, seccomp.AUDIT_ARCH_X86_64)
    last = struct.unpack("<HBBI", program[-8:])
    assert last == (0x06, 0, 0, seccomp.RET_KILL_PROCESS)
    assert jf == len(program) // 8 - 3  # a foreign architecture jumps to the final kill


@pytest.mark.parametrize(("pid", "since", "until", "inside"), [
    (5, 3, 9, True), (3, 3, 9, False), (9, 3, 9, True), (10, 3, 9, False),
    (32000, 31990, 10, True), (4, 31990, 10, True), (20, 31990, 10, False), (7, -1, 5, True),
])
def test_pid_window_wraps(pid: int, since: int, until: int, inside: bool) -> None:
    assert sweep.in_window(pid, since, until) is inside


def test_small_windows_are_probed_not_listed() -> None:
    assert sweep.pids(10, 13) == [11, 12, 13]


def test_window_explained_only_by_known_pids() -> None:
    assert sweep.window_explained(10, 12, {11, 12})
    assert not sweep.window_explained(10, 12, {11})
    assert not sweep.window_explained(-1, 12, {11, 12})


def test_frames_survive_arbitrary_splits() -> None:
    data = encode({"a": 1, "code": "print('é')"}) + encode({"b": [1, 2]})
    reader = FrameReader()
    got = []
    for i in range(len(data)):
        got += reader.feed(data[i:i + 1])
    assert got == [{"a": 1, "code": "print('é')"}, {"b": [1, 2]}]


def test_frames_reject_garbage() -> None:
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\x00\x00\x00\x02[]")
    with pytest.raises(ProtocolError):
        FrameReader().feed(b"\xff\xff\xff\xff")


def test_config_round_trips_and_validates() -> None:
    config = SandboxConfig(cpu_time_s=1.5, preload=("math",))
    assert SandboxConfig.from_json(config.to_json()) == config
    with pytest.raises(ValueError, match="unknown"):
        SandboxConfig.from_json({"cpu_seconds": 1})
    with pytest.raises(ValueError):
        SandboxConfig(cpu_time_s=0).validate()
    with pytest.raises(ValueError):
        SandboxConfig(memory_mb=1).validate()


@pytest.mark.parametrize(("data", "reason"), [
    (b"[" * 60000, "over"),
    (b"[" * 3000, "nested"),
    (b'{"op":"result","status":[]}', "unknown status"),
    (b'{"op":"result","status":"fine"}', "unknown status"),
    (b'{"op":"result","status":"ok","exit_code":1e999}', "exit code"),
    (b'{"op":"result","status":"ok","exit_code":true}', "exit code"),
    (b'{"op":"snapshot","pid":1180591620717411303424}', "pid out of range"),
    (b'{"op":"snapshot","pid":-5}', "pid out of range"),
    (b'{"op":"snapshot","pid":"7"}', "pid out of range"),
    (b'{"op":"ready","extra":1}', "unexpected fields"),
    (b'{"op":"boot","report":{"a":1}}', "bad entry"),
    (b'{"op":"exec"}', "unknown op"),
    (b"\xff\xfe", "not JSON"),
    (b"", "empty"),
    (b"7", "not a JSON object"),
])
def test_channel_rejects_hostile_messages(data: bytes, reason: str) -> None:
    with pytest.raises(channel.BadMessage, match=reason):
        channel.parse(data, pid_limit=4_194_304)


def test_channel_accepts_what_the_holder_sends() -> None:
    result = channel.parse(b'{"op":"result","status":"exited","exit_code":3,"shed":false}', 99)
    assert result == channel.CellResult("exited", 3, False)
    assert channel.parse(b'{"op":"snapshot","pid":0}', 99) == channel.SnapshotTaken(0)
    assert channel.parse(b'{"op":"ready"}', 99) == channel.Ready()
    boot = channel.parse(b'{"op":"boot","report":{"uid":"on (uid 7)"}}', 99)
    assert boot == channel.Boot({"uid": "on (uid 7)"})
