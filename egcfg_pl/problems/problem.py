"""The one record for a coding problem, whatever dataset it came from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

TestKind = Literal["assert", "stdio", "call"]


@dataclass(frozen=True)
class TestCase:
    """One unit of testing; ``pass_rate`` counts these.

    - ``assert``: ``code`` is Python run after the program (and the problem's ``test_setup``); it
      passes when it raises nothing. HumanEval / MBPP asserts are split so that each assert is one test.
    - ``stdio``: the program reads ``input`` on stdin; its stdout must match ``output``
      (whitespace-tolerant, float-tolerant).
    - ``call``: ``fn_name(*args)`` (or ``Solution().fn_name(*args)``) must return ``expected``
      (APPS call-based problems).
    """

    __test__ = False  # not a pytest class

    kind: TestKind
    code: str = ""
    input: str = ""
    output: str = ""
    fn_name: str = ""
    args: tuple[Any, ...] = ()
    expected: Any = None
    public: bool = False  # shown in the statement (CodeContests "in_statement", MBPP prompt asserts)


@dataclass(frozen=True)
class Problem:
    """A coding problem. ``id`` is unique across datasets (``"mbpp/601"``, ``"HumanEval/0"``)."""

    id: str
    source: str  # humaneval | mbpp | mbpp_sanitized | apps | codecontests | custom
    split: str
    statement: str  # natural-language description (may repeat the prompt for HumanEval)
    tests: tuple[TestCase, ...]
    prompt: str = ""  # code to complete or starter code (HumanEval signature+docstring, APPS starter)
    entry_point: str = ""  # function under test for call-based problems; "" for stdin/stdout
    test_setup: str = ""  # code run once before the tests (imports, MBPP test_setup_code, HumanEval helpers)
    solutions: tuple[str, ...] = ()
    difficulty: str = ""
    meta: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def io_mode(self) -> str:
        """``"stdio"`` when the tests feed stdin, else ``"call"``."""
        return "stdio" if self.tests and self.tests[0].kind == "stdio" else "call"

    @property
    def num_tests(self) -> int:
        return len(self.tests)


def id_names(problem_id: str) -> tuple[str, str, str]:
    """The spellings that name a problem: its full id (``apps/train/42``), the id without the dataset prefix
    (``train/42``) and its last part (``42``); for ``mbpp/601`` the last two are both ``601``."""
    return problem_id, problem_id.split("/", 1)[-1], problem_id.rsplit("/", 1)[-1]
