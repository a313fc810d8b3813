"""Cell output capped at the source: head + tail ring buffers in memory shared with the manager.

The sandboxed holder writes into a shared mapping; the manager reads it after the cell, so output
printed before a timeout or a crash still reaches the caller, and a flood never costs more memory
than the cap.
"""

from __future__ import annotations

import builtins
import mmap
import os
import struct

# Holders write through this module after cells ran: keep cells' patched builtins out of it.
globals().update({name: value for name, value in vars(builtins).items()
                  if not name.startswith("__")})

_TOTAL = struct.Struct("<Q")
STREAMS = ("stdout", "stderr")


def layout(cap: int) -> tuple[int, int, int]:
    """(head, tail, stride) bytes for one stream whose caller-visible cap is ``cap``."""
    head = cap // 2
    tail = cap - head
    return head, tail, _TOTAL.size + head + tail


def create_buffer(cap: int) -> int:
    """A memfd large enough for both streams; the caller owns the returned fd."""
    size = layout(cap)[2] * len(STREAMS)
    fd = os.memfd_create("sandbox-output", 0)
    os.ftruncate(fd, size)
    return fd


def map_buffer(fd: int, cap: int) -> mmap.mmap:
    return mmap.mmap(fd, layout(cap)[2] * len(STREAMS), mmap.MAP_SHARED,
                     mmap.PROT_READ | mmap.PROT_WRITE)


class StreamWriter:
    """Byte sink for one stream: the first ``head`` bytes stay, later bytes overwrite a tail ring."""

    def __init__(self, mem: mmap.mmap, index: int, cap: int) -> None:
        self._mem = mem
        self._head, self._tail, stride = layout(cap)
        self._base = index * stride
        self._head_at = self._base + _TOTAL.size
        self._ring_at = self._head_at + self._head

    def reset(self) -> None:
        _TOTAL.pack_into(self._mem, self._base, 0)

    def write(self, data: bytes) -> None:
        total = _TOTAL.unpack_from(self._mem, self._base)[0]
        size = len(data)
        if total < self._head:
            take = min(size, self._head - total)
            start = self._head_at + total
            self._mem[start:start + take] = data[:take]
            data = data[take:]
            _TOTAL.pack_into(self._mem, self._base, total + take)
            total += take
        if data:
            self._write_ring(total, data)
            _TOTAL.pack_into(self._mem, self._base, total + len(data))

    def _write_ring(self, total: int, data: bytes) -> None:
        ring = self._tail
        end = total + len(data) - self._head  # ring offset one past the last byte, unwrapped
        if len(data) > ring:
            data = data[-ring:]
        pos = (end - len(data)) % ring
        first = min(len(data), ring - pos)
        self._mem[self._ring_at + pos:self._ring_at + pos + first] = data[:first]
        if first < len(data):
            rest = len(data) - first
            self._mem[self._ring_at:self._ring_at + rest] = data[first:]


def read_stream(mem: mmap.mmap, index: int, cap: int) -> tuple[str, bool]:
    """The caller's view of one stream: text (head, cut marker, tail) and whether it was cut."""
    head, tail, stride = layout(cap)
    base = index * stride
    total = _TOTAL.unpack_from(mem, base)[0]
    head_at = base + _TOTAL.size
    ring_at = head_at + head
    if total <= head:
        return _text(mem[head_at:head_at + total]), False
    first = mem[head_at:ring_at]
    spill = total - head
    if spill <= tail:
        return _text(first + mem[ring_at:ring_at + spill]), False
    pos = spill % tail
    last = mem[ring_at + pos:ring_at + tail] + mem[ring_at:ring_at + pos]
    marker = f"\n... [{spill - tail} bytes cut] ...\n".encode()
    return _text(first) + _text(marker) + _text(last), True


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")
