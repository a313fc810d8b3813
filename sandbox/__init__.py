"""A fast, stateful, hostile-code-proof Python sandbox for model-written code."""

from sandbox.api import CodeRunner, ExecResult, ExecStatus, Session
from sandbox.config import SandboxConfig
from sandbox.pool import SandboxError, SandboxPool, SandboxSession

__all__ = ["CodeRunner", "ExecResult", "ExecStatus", "SandboxConfig", "SandboxError",
           "SandboxPool", "SandboxSession", "Session"]
