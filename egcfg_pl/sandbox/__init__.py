"""Run untrusted programs isolated and judge them honestly: ``Executor(config).run(problem, program)``."""

from egcfg_pl.sandbox.config import SandboxConfig
from egcfg_pl.sandbox.executor import Executor
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict

__all__ = ["Executor", "SandboxConfig", "Status", "TestResult", "Verdict"]
