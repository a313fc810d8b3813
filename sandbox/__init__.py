"""A fast, stateful, hostile-code-proof Python sandbox for model-written code."""

from sandbox.api import CodeRunner, ExecResult, ExecStatus, Session

__all__ = ["CodeRunner", "ExecResult", "ExecStatus", "Session"]
