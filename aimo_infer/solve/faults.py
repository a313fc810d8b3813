"""Whose fault an exception is: the harness's own code, or the engine, sandbox or a library.

A harness bug is reported with its traceback and the engine is kept: reloading it (minutes on a
GPU) would not fix the bug. Anything raised by an engine adapter (``aimo_infer/backends``), the
sandbox, or code outside the package (an engine library, a test's fake engine) counts as the
engine's, and may warrant a reload.
"""

from __future__ import annotations

from pathlib import Path

from aimo_infer.errors import UserError

_PACKAGE = Path(__file__).resolve().parent.parent
_ENGINE_SIDE = (_PACKAGE / "backends",)


def raised_by_harness(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in the package's own code (not an adapter), as a bug."""
    if isinstance(exc, (UserError, MemoryError, OSError)):  # engine/environment failures
        return False
    tb, where = exc.__traceback__, None
    while tb is not None:
        where, tb = tb.tb_frame.f_code.co_filename, tb.tb_next
    if where is None:
        return False
    path = Path(where).resolve()
    return path.is_relative_to(_PACKAGE) and not any(path.is_relative_to(p) for p in _ENGINE_SIDE)
