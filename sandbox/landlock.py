"""Landlock through raw syscalls: writes only below the scratch directory, reads only of what a
cell needs, no TCP, no signals or abstract unix sockets leaving the sandbox (as far as the
kernel's ABI allows)."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass

SYS_CREATE_RULESET = 444
SYS_ADD_RULE = 445
SYS_RESTRICT_SELF = 446
CREATE_RULESET_VERSION = 1
RULE_PATH_BENEATH = 1

EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13  # ABI 2
TRUNCATE = 1 << 14  # ABI 3
IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

PR_SET_NO_NEW_PRIVS = 38


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64),
                ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    return libc


def abi_version() -> int:
    """The kernel's Landlock ABI (0 when Landlock is absent or disabled)."""
    result = _libc().syscall(SYS_CREATE_RULESET, None, ctypes.c_size_t(0),
                             ctypes.c_uint32(CREATE_RULESET_VERSION))
    return max(int(result), 0)


def handled_fs(abi: int) -> int:
    rights = (EXECUTE | WRITE_FILE | READ_FILE | READ_DIR | REMOVE_DIR | REMOVE_FILE | MAKE_CHAR
              | MAKE_DIR | MAKE_REG | MAKE_SOCK | MAKE_FIFO | MAKE_BLOCK | MAKE_SYM)
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    if abi >= 5:
        rights |= IOCTL_DEV
    return rights


@dataclass
class Ruleset:
    """A ruleset built while the process may still open everything; enforced later."""

    fd: int
    abi: int


def prepare(writable_dirs: list[str], writable_files: list[str], readable_dirs: list[str],
            readable_files: list[str]) -> Ruleset:
    """Build the ruleset (every path opened now, e.g. while still root). Raises OSError if
    Landlock is missing or a writable path cannot be added; unreadable extras are skipped."""
    abi = abi_version()
    if abi < 1:
        raise OSError(errno.EOPNOTSUPP, "Landlock is not available on this kernel")
    libc = _libc()
    handled = handled_fs(abi)
    attr = _RulesetAttr(handled, NET_BIND_TCP | NET_CONNECT_TCP if abi >= 4 else 0,
                        SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0)
    size = 24 if abi >= 6 else 16 if abi >= 4 else 8
    ruleset = int(libc.syscall(SYS_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size),
                               ctypes.c_uint32(0)))
    if ruleset < 0:
        raise _error("landlock_create_ruleset")
    try:
        for path in writable_dirs:
            _add_rule(libc, ruleset, path, handled & ~EXECUTE)
        file_rights = handled & (WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV)
        for path in writable_files:
            _add_rule(libc, ruleset, path, file_rights)
        for path in readable_dirs:
            with contextlib.suppress(OSError):
                _add_rule(libc, ruleset, path, READ_FILE | READ_DIR)
        for path in readable_files:
            with contextlib.suppress(OSError):
                _add_rule(libc, ruleset, path, READ_FILE)
    except BaseException:
        os.close(ruleset)
        raise
    return Ruleset(ruleset, abi)


def enforce(ruleset: Ruleset) -> int:
    """Confine the calling process with a prepared ruleset; returns the ABI used."""
    libc = _libc()
    try:
        if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise _error("PR_SET_NO_NEW_PRIVS")
        if libc.syscall(SYS_RESTRICT_SELF, ruleset.fd, ctypes.c_uint32(0)) != 0:
            raise _error("landlock_restrict_self")
    finally:
        os.close(ruleset.fd)
    return ruleset.abi


def restrict(writable_dirs: list[str], writable_files: list[str],
             readable_dirs: Sequence[str] = (), readable_files: Sequence[str] = ()) -> int:
    """Prepare and enforce in one go; returns the ABI used."""
    return enforce(prepare(writable_dirs, writable_files, list(readable_dirs),
                           list(readable_files)))


def _add_rule(libc: ctypes.CDLL, ruleset: int, path: str, rights: int) -> None:
    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    try:
        rule = _PathBeneath(rights, fd)
        if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule),
                        ctypes.c_uint32(0)) != 0:
            raise _error(f"landlock_add_rule({path})")
    finally:
        os.close(fd)


def _error(what: str) -> OSError:
    err = ctypes.get_errno()
    return OSError(err, f"{what}: {os.strerror(err)}")
