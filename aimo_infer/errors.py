"""Domain errors: bad input or environment, which the CLI reports in one line.

Anything else that escapes a command is a bug in the harness and shows its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user can fix (a file, flag, setting or missing install); the message says what."""


class DataError(UserError, ValueError):
    """A file the user gave (a run, trace, results or manifest file) cannot be read as one."""


class MissingFile(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class ExternalError(UserError, OSError):
    """A tool the command runs (pip, a model server) failed; the message carries its output."""
