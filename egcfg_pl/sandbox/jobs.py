"""Turning a (problem, program) pair into fork-server jobs, and raw results into a ``Verdict``.

No test code ever shares an interpreter with the program. stdio tests: the host compares stdout.
Assert and call tests run in a trusted test process whose calls into the program cross a pipe as plain
data (``remote.py``); expected answers of call tests and of asserts of the form ``assert <expr> ==
<literal>`` never enter any sandbox process: the test process evaluates ``<expr>`` (or the call) and
the host compares the value (``compare.py``). Other asserts (and HumanEval ``check`` functions kept
whole) are judged in the test process: passed = the test code raised nothing.
"""

from __future__ import annotations

import ast
import functools
from dataclasses import dataclass
from typing import Any

from egcfg_pl.ast_parse import parse
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sandbox import compare
from egcfg_pl.sandbox.config import SandboxConfig
from egcfg_pl.sandbox.testcode import program_names, prompt_helpers, setup_imports
from egcfg_pl.sandbox.values import decode_value, encode_value
from egcfg_pl.sandbox.verdict import Status, TestResult

_NO_LITERAL = object()


@dataclass(frozen=True)
class Check:
    """How the host judges one test's raw result."""

    index: int  # position in problem.tests
    kind: str  # "assert" | "value" | "call" | "stdio"
    expected: Any = None
    wrapped: bool = False  # APPS call test whose expected value was unwrapped from [value]


@dataclass(frozen=True)
class Job:
    """One fork-server job: ``spec`` goes to the server, ``tests`` (assert/call jobs: the trusted test
    code) only to the test process, when the server asks for it; ``checks`` stay on the host."""

    spec: dict[str, Any]
    tests: dict[str, Any] | None
    checks: list[Check]


@functools.lru_cache(maxsize=1 << 16)
def split_assert(code: str) -> tuple[str, Any] | None:
    """``assert <expr> == <literal>`` -> (expr source, literal value); None for any other test code.

    Cached per test code (the same tests are run for many programs); callers must not mutate the value.
    """
    try:
        tree = parse(code)
    except SyntaxError:
        return None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert) or tree.body[0].msg is not None:
        return None
    test = tree.body[0].test
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.Eq)):
        return None
    try:
        expected = ast.literal_eval(test.comparators[0])
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None
    return ast.unparse(test.left), expected


def _limits(config: SandboxConfig, num_tests: int) -> dict[str, Any]:
    return {
        "timeout": config.timeout,
        "check_timeout": config.check_timeout,
        "memory_mb": config.memory_mb,
        "cpu_s": int(config.timeout * (num_tests + 1)) + 1,  # backstop; wall timeouts act first
        "fsize_mb": config.max_file_mb,
        "nofile": config.max_open_files,
        "nproc": config.max_processes,
        "max_output": config.max_output_bytes,
    }


def _inprocess_item(test: TestCase, index: int, wrapped: bool) -> tuple[dict[str, Any], Check]:
    if test.kind == "call":
        item = {"k": "call", "fn": test.fn_name, "args": encode_value(tuple(test.args))}
        return item, Check(index, "call", test.expected, wrapped)
    split = split_assert(test.code)
    if split is not None:
        return {"k": "value", "expr": split[0]}, Check(index, "value", split[1])
    return {"k": "assert", "code": test.code}, Check(index, "assert")


def _trusted_code(problem: Problem, tests: list[TestCase]) -> tuple[str, tuple[str, ...]]:
    """(setup the test process runs, names it takes from the program). Assert tests also get the
    prompt's helpers and whatever names their code reads but does not define; call tests need neither."""
    asserts = [t.code for t in tests if t.kind == "assert"]
    if not asserts:
        return problem.test_setup, ()
    setup = "\n".join(filter(None, (prompt_helpers(problem.prompt, problem.entry_point), problem.test_setup)))
    return setup, program_names((setup, *asserts), problem.entry_point)


def build_jobs(problem: Problem, program: str, config: SandboxConfig) -> list[Job]:
    """One job for the stdio tests and one for the in-process (assert/call) tests, as present."""
    wrapped = tuple(problem.meta.get("wrapped_expected", ()))
    stdio = [(i, t) for i, t in enumerate(problem.tests) if t.kind == "stdio"]
    inproc = [(i, t) for i, t in enumerate(problem.tests) if t.kind != "stdio"]
    jobs = []
    if inproc:
        pairs = [_inprocess_item(t, i, i < len(wrapped) and bool(wrapped[i])) for i, t in inproc]
        setup, names = _trusted_code(problem, [t for _, t in inproc])
        spec = {"kind": "inprocess", "name": "__solution__", "program": program,
                "setup": setup_imports(problem.test_setup), "names": list(names), "n": len(pairs),
                "limits": _limits(config, len(pairs))}
        tests = {"setup": setup, "tests": [p[0] for p in pairs], "names": list(names), "entry": problem.entry_point}
        jobs.append(Job(spec, tests, [p[1] for p in pairs]))
    if stdio:
        spec = {"kind": "stdio", "name": "__main__", "program": program, "setup": "",
                "tests": [t.input for _, t in stdio], "limits": _limits(config, 1)}
        jobs.append(Job(spec, None, [Check(i, "stdio", t.output) for i, t in stdio]))
    return jobs


def judge(check: Check, raw: dict[str, Any]) -> TestResult:
    """Trusted verdict for one test from the fork server's raw result."""
    seconds, detail = float(raw.get("seconds", 0.0)), str(raw.get("detail", ""))[:300]
    status = raw.get("status")
    if status == "ok" and check.kind == "stdio":
        ok = compare.stdout_matches(raw.get("stdout", ""), check.expected)
        return TestResult(Status.PASSED if ok else Status.FAILED, seconds, "" if ok else "wrong output")
    if status == "ok" and check.kind in ("value", "call"):
        try:
            value = decode_value(raw.get("value"))
        except Exception:  # malformed value: cannot be the expected answer
            return TestResult(Status.FAILED, seconds, "unreadable value")
        if check.kind == "value":
            ok = compare.value_matches(value, check.expected)
        else:
            ok = compare.call_matches(value, check.expected, check.wrapped)
        return TestResult(Status.PASSED if ok else Status.FAILED, seconds, "" if ok else f"got {value!r}"[:300])
    if status == "passed" and check.kind == "assert":
        return TestResult(Status.PASSED, seconds)
    try:
        parsed = Status(status)
    except ValueError:
        parsed = Status.KILLED
    if parsed is Status.PASSED:  # a "passed" for a test the host judges itself is not trusted
        parsed, detail = Status.KILLED, "unexpected verdict kind"
    return TestResult(parsed, seconds, detail)
