"""A session's scratch files across a rollback: saved with each snapshot, put back with it.

A snapshot keeps the memory of the holder; the files a cell wrote live on disk. So that a
rollback restores both, the manager copies the scratch directory (when small) as it asks for a
snapshot, and copies it back before the snapshot wakes. The copy is read through directory
descriptors without following links, so a link planted by a cell cannot make it read elsewhere;
only directories, regular files and symbolic links (as links) are kept.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat

from sandbox import sweep

SAVE_MAX_BYTES = 16 * 1024 * 1024  # larger scratch directories are not saved (the caller says so)
SAVE_MAX_FILES = 256
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TooLarge(Exception):
    pass


def save(scratch: str, dest: str) -> bool:
    """Replace ``dest`` with a copy of ``scratch``; False (and no copy) when it is too large."""
    if os.path.lexists(dest):
        shutil.rmtree(dest, ignore_errors=True)
    used, entries = sweep.disk_usage(scratch, SAVE_MAX_FILES)
    if used > SAVE_MAX_BYTES or entries > SAVE_MAX_FILES:
        return False
    if entries == 0:  # the usual case: nothing to copy, and no copy means an empty directory
        return True
    os.mkdir(dest, 0o700)
    budget = [SAVE_MAX_BYTES]
    try:
        source = os.open(scratch, _DIR_FLAGS)
        try:
            _copy_dir(source, dest, budget)
        finally:
            os.close(source)
    except (OSError, TooLarge):
        shutil.rmtree(dest, ignore_errors=True)
        return False
    return True


def _copy_dir(source_fd: int, dest: str, budget: list[int]) -> None:
    for name in os.listdir(source_fd):
        info = os.stat(name, dir_fd=source_fd, follow_symlinks=False)
        target = os.path.join(dest, name)
        if stat.S_ISDIR(info.st_mode):
            os.mkdir(target, 0o700)
            child = os.open(name, _DIR_FLAGS, dir_fd=source_fd)
            try:
                _copy_dir(child, target, budget)
            finally:
                os.close(child)
        elif stat.S_ISLNK(info.st_mode):
            os.symlink(os.readlink(name, dir_fd=source_fd), target)
        elif stat.S_ISREG(info.st_mode):
            _copy_file(source_fd, name, target, info.st_mode, budget)


def _copy_file(source_fd: int, name: str, target: str, mode: int, budget: list[int]) -> None:
    fd = os.open(name, _FILE_FLAGS, dir_fd=source_fd)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        out = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            while chunk := os.read(fd, 1 << 20):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise TooLarge
                os.write(out, chunk)
            os.fchmod(out, stat.S_IMODE(mode) & 0o777)
        finally:
            os.close(out)
    finally:
        os.close(fd)


def empty(scratch: str) -> None:
    """Remove everything inside ``scratch`` (the directory itself stays)."""
    with contextlib.suppress(OSError), os.scandir(scratch) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def restore(saved: str, scratch: str, uid: int | None) -> None:
    """Make ``scratch`` equal to the saved copy again, owned by the session's uid."""
    empty(scratch)
    shutil.copytree(saved, scratch, symlinks=True, dirs_exist_ok=True)
    if uid is None:
        return
    for root, dirs, files in os.walk(scratch):
        for name in dirs + files:
            with contextlib.suppress(OSError):
                os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)
