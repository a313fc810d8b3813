"""STAND-IN packages (``vllm``, ``tensorrt_llm``, ``kaggle_evaluation``) for tests: not the real ones.

They are importable only inside ``standin_packages()``, so no other test can mistake them for
an installed engine.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

STANDIN_DIR = Path(__file__).parent
PACKAGES = ("vllm", "tensorrt_llm", "standin_core", "kaggle_evaluation")


def _loaded() -> list[str]:
    return [name for name in sys.modules if name.split(".")[0] in PACKAGES]


@contextmanager
def standin_packages() -> Iterator[Path]:
    """Put the stand-ins first on ``sys.path``; afterwards forget them and restore what was there."""
    saved = {name: sys.modules.pop(name) for name in _loaded()}
    sys.path.insert(0, str(STANDIN_DIR))
    importlib.invalidate_caches()
    try:
        yield STANDIN_DIR
    finally:
        sys.path.remove(str(STANDIN_DIR))
        for name in _loaded():
            del sys.modules[name]
        sys.modules.update(saved)
