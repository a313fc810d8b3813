"""aimo-infer: an inference harness for AI Mathematical Olympiad submissions.

The package does three jobs over the engines (``backends/``) and the sandbox (top-level
``sandbox/``): ``solve/`` one problem, ``kaggle/`` submit, ``evaluate/`` measure locally.
The public API is what this module exports.
"""

from aimo_infer.solve.answer import extract_answer

__version__ = "0.1.0"
__all__ = ["__version__", "extract_answer"]
