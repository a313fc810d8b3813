"""A seccomp filter the sandboxed process installs on itself: a hand-assembled classic BPF program.

It denies running programs, internet sockets, leaving the process group, signalling anyone,
tracing, namespaces, SysV IPC, POSIX message queues, memfds, fallocate and
kernel-administration calls. Everything else is allowed: the filter is a
second wall behind the separate uid and Landlock, not the only one.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct
from collections.abc import Sequence
from dataclasses import dataclass

AUDIT_ARCH_X86_64 = 0xC000003E
RET_KILL_PROCESS = 0x80000000
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
X32_SYSCALL_BIT = 0x40000000

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
PR_SET_DUMPABLE = 4
AF_UNIX = 1
CLONE_NAMESPACES = 0x7E020000  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET
TIOCSTI = 0x5412
TIOCLINUX = 0x541C

_LD_W_ABS = 0x20
_JEQ = 0x15
_JGE = 0x35
_JSET = 0x45
_RET = 0x06

# x86_64 syscall numbers denied outright (EPERM).
X86_64_DENY = {
    "execve": 59, "execveat": 322, "setsid": 112, "setpgid": 109,
    "kill": 62, "tkill": 200, "tgkill": 234, "rt_sigqueueinfo": 129, "rt_tgsigqueueinfo": 297,
    "pidfd_send_signal": 424, "pidfd_open": 434, "pidfd_getfd": 438,
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "swapon": 167, "swapoff": 168, "reboot": 169, "kexec_load": 246, "kexec_file_load": 320,
    "init_module": 175, "finit_module": 313, "delete_module": 176, "bpf": 321,
    "perf_event_open": 298, "userfaultfd": 323, "keyctl": 250, "add_key": 248, "request_key": 249,
    "acct": 163, "quotactl": 179, "settimeofday": 164, "clock_settime": 227, "adjtimex": 159,
    "clock_adjtime": 305, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173,
    "syslog": 103, "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "open_by_handle_at": 304, "name_to_handle_at": 303, "fanotify_init": 300,
    "lookup_dcookie": 212, "mount_setattr": 442, "fsopen": 430, "fsconfig": 431, "fsmount": 432,
    "fspick": 433, "move_mount": 429, "open_tree": 428, "vhangup": 153, "uselib": 134,
    # SysV IPC and POSIX message queues outlive the process and cross uids; memfds hold memory
    # outside the address-space limit.
    "shmget": 29, "shmat": 30, "shmctl": 31, "shmdt": 67, "semget": 64, "semop": 65,
    "semctl": 66, "semtimedop": 220, "msgget": 68, "msgsnd": 69, "msgrcv": 70, "msgctl": 71,
    "mq_open": 240, "mq_unlink": 241, "mq_timedsend": 242, "mq_timedreceive": 243,
    "mq_notify": 244, "mq_getsetattr": 245, "memfd_create": 319, "memfd_secret": 447,
}
# fallocate reserves disk blocks past the file-size limit (FALLOC_FL_KEEP_SIZE): refused as
# unsupported, glibc's posix_fallocate then writes the blocks itself, within the limit.
X86_64_FALLOCATE = 285
X86_64_SOCKET = 41
X86_64_CLONE = 56
X86_64_CLONE3 = 435
X86_64_PRCTL = 157
X86_64_IOCTL = 16


@dataclass(frozen=True)
class Insn:
    code: int
    jt: int | str
    jf: int | str
    k: int


def _ld(offset: int) -> Insn:
    return Insn(_LD_W_ABS, 0, 0, offset)


def _ret(value: int) -> Insn:
    return Insn(_RET, 0, 0, value)


def _arg_low(index: int) -> int:
    return 16 + 8 * index


def assemble(items: Sequence[Insn | str]) -> bytes:
    """Resolve string labels (forward jumps only) and pack ``struct sock_filter`` entries."""
    labels: dict[str, int] = {}
    program: list[Insn] = []
    for item in items:
        if isinstance(item, str):
            labels[item] = len(program)
        else:
            program.append(item)

    def offset(at: int, target: int | str) -> int:
        if isinstance(target, int):
            return target
        distance = labels[target] - at - 1
        if not 0 <= distance <= 255:
            raise ValueError(f"jump to {target} out of range ({distance})")
        return distance

    packed = bytearray()
    for at, insn in enumerate(program):
        packed += struct.pack("<HBBI", insn.code, offset(at, insn.jt), offset(at, insn.jf), insn.k)
    return bytes(packed)


def x86_64_program() -> bytes:
    """The filter for x86_64 (the Kaggle machines); other architectures run without it."""
    deny_errno = RET_ERRNO | errno.EPERM
    items: list[Insn | str] = [
        _ld(4), Insn(_JEQ, 0, "kill", AUDIT_ARCH_X86_64),
        _ld(0), Insn(_JGE, "enosys", 0, X32_SYSCALL_BIT),
    ]
    items += [Insn(_JEQ, "deny", 0, nr) for nr in sorted(X86_64_DENY.values())]
    items += [
        Insn(_JEQ, "socket", 0, X86_64_SOCKET),
        Insn(_JEQ, "clone", 0, X86_64_CLONE),
        Insn(_JEQ, "enosys", 0, X86_64_CLONE3),  # libc falls back to clone(), whose flags we see
        Insn(_JEQ, "prctl", 0, X86_64_PRCTL),
        Insn(_JEQ, "ioctl", 0, X86_64_IOCTL),
        Insn(_JEQ, "eopnotsupp", 0, X86_64_FALLOCATE),
        _ret(RET_ALLOW),
        "socket", _ld(_arg_low(0)), Insn(_JEQ, "allow", "eacces", AF_UNIX),
        "clone", _ld(_arg_low(0)), Insn(_JSET, "deny", "allow", CLONE_NAMESPACES),
        "prctl", _ld(_arg_low(0)), Insn(_JEQ, "deny", "allow", PR_SET_DUMPABLE),
        "ioctl", _ld(_arg_low(1)), Insn(_JEQ, "deny", 0, TIOCSTI),
        Insn(_JEQ, "deny", "allow", TIOCLINUX),
        "allow", _ret(RET_ALLOW),
        "deny", _ret(deny_errno),
        "eacces", _ret(RET_ERRNO | errno.EACCES),
        "enosys", _ret(RET_ERRNO | errno.ENOSYS),
        "eopnotsupp", _ret(RET_ERRNO | errno.EOPNOTSUPP),
        "kill", _ret(RET_KILL_PROCESS),
    ]
    return assemble(items)


def supported() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def install() -> None:
    """Install the filter on the calling (single-threaded) process; raises OSError on failure."""
    if not supported():
        raise OSError(errno.ENOSYS, f"no seccomp filter for {platform.machine()}")
    libc = ctypes.CDLL(None, use_errno=True)
    ulong = ctypes.c_ulong
    libc.prctl.argtypes = [ctypes.c_int, ulong, ulong, ulong, ulong]
    program = x86_64_program()
    buffer = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buffer, ctypes.c_void_p))
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_NO_NEW_PRIVS: {errno.errorcode.get(err, err)}")
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"PR_SET_SECCOMP: {errno.errorcode.get(err, err)}")
