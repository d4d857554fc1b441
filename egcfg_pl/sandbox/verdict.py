"""What the sandbox says about one program: per-test statuses and the pass rate."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class Status(str, Enum):
    PASSED = "passed"
    FAILED = "failed"  # ran, wrong answer / assertion failed
    TIMEOUT = "timeout"
    MEMORY = "memory"  # MemoryError or address-space limit
    ERROR = "error"  # runtime exception other than an assertion
    SYNTAX = "syntax_error"  # the program does not compile
    KILLED = "killed"  # the process died without a trusted verdict for this test


@dataclass(frozen=True)
class TestResult:
    __test__ = False  # not a pytest class
    status: Status
    seconds: float = 0.0
    detail: str = ""  # short, truncated message (exception type, diff head)


@dataclass(frozen=True)
class Verdict:
    problem_id: str
    results: tuple[TestResult, ...]
    seconds: float = 0.0  # wall time of the whole run

    @property
    def total(self) -> int:
        return len(self.results)

    @property
    def passed(self) -> int:
        return sum(r.status is Status.PASSED for r in self.results)

    @property
    def pass_rate(self) -> float:
        """passed / total tests, in [0, 1] (0 for a problem with no tests)."""
        return self.passed / self.total if self.total else 0.0

    @property
    def all_passed(self) -> bool:
        return self.total > 0 and self.passed == self.total
