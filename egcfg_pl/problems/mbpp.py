"""MBPP (Austin et al. 2021): full (974 problems) and sanitized (427), ids ``mbpp/<task_id>``.

Splits follow the MBPP README by ``task_id``: 1-10 few-shot prompt, 11-510 test, 511-600
validation, 601-974 train. Each assert of ``test_list`` is one test; the asserts are marked public
because MBPP prompts conventionally show them. ``challenge_test_list`` is added only on request.
"""

from __future__ import annotations

import ast
import builtins
import warnings
from pathlib import Path
from typing import Any

from egcfg_pl.ast_parse import parse
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.problems.rows import Row, RowError, convert_rows, hub_rows, read_rows, require

HUB_REPO = "google-research-datasets/mbpp"
SPLIT_RANGES: dict[str, range] = {
    "prompt": range(1, 11),
    "test": range(11, 511),
    "validation": range(511, 601),
    "train": range(601, 975),
}
SPLITS = tuple(SPLIT_RANGES)
FIELDS_FULL = ("task_id", "text", "code", "test_list", "test_setup_code", "challenge_test_list (optional)")
FIELDS_SANITIZED = ("task_id", "prompt", "code", "test_list", "test_imports")


def split_of(task_id: int) -> str:
    """The MBPP split a task id belongs to ("" outside 1-974)."""
    return next((name for name, ids in SPLIT_RANGES.items() if task_id in ids), "")


def load(
    split: str = "test",
    path: str | Path | None = None,
    include_challenge: bool = False,
    skip_malformed: bool = False,
) -> list[Problem]:
    """Full MBPP problems from ``path`` or the hub (``split="all"`` keeps every split)."""
    rows = read_rows(path) if path is not None else _hub(split, "full")
    return convert_rows(
        rows,
        lambda r: full_problem(r, include_challenge),
        dataset="mbpp",
        expected_fields=FIELDS_FULL,
        skip_malformed=skip_malformed,
    )


def load_sanitized(split: str = "test", path: str | Path | None = None, skip_malformed: bool = False) -> list[Problem]:
    """Sanitized MBPP problems from ``path`` or the hub."""
    rows = read_rows(path) if path is not None else _hub(split, "sanitized")
    return convert_rows(
        rows, sanitized_problem, dataset="mbpp_sanitized", expected_fields=FIELDS_SANITIZED, skip_malformed=skip_malformed
    )


def _hub(split: str, config: str) -> list[Row]:
    splits = SPLITS if split == "all" else (split,)
    dataset = "mbpp" if config == "full" else "mbpp_sanitized"
    return [row for s in splits for row in hub_rows(HUB_REPO, s, config, dataset=dataset)]


def full_problem(row: dict[str, Any], include_challenge: bool = False) -> Problem:
    asserts = _asserts(row, "test_list")
    if include_challenge:
        asserts += _asserts(row, "challenge_test_list", required=False)
    setup = require(row, "test_setup_code", str) if "test_setup_code" in row else ""
    return _problem(row, "mbpp", require(row, "text", str), asserts, _crlf(setup))


def sanitized_problem(row: dict[str, Any]) -> Problem:
    imports = require(row, "test_imports", list) if "test_imports" in row else []
    return _problem(row, "mbpp_sanitized", require(row, "prompt", str), _asserts(row, "test_list"), "\n".join(imports))


def _problem(row: dict[str, Any], source: str, statement: str, asserts: list[str], setup: str) -> Problem:
    task_id = require(row, "task_id", int)
    code = _crlf(require(row, "code", str))
    return Problem(
        id=f"{source}/{task_id}",
        source=source,
        split=split_of(task_id),
        statement=statement,
        tests=tuple(TestCase(kind="assert", code=a, public=True) for a in asserts),
        entry_point=entry_point(asserts[0], code),
        test_setup=setup,
        solutions=(code,),
    )


def _asserts(row: dict[str, Any], name: str, required: bool = True) -> list[str]:
    if not required and name not in row:
        return []
    tests = require(row, name, list)
    if required and not tests:
        raise RowError(name, f"field {name!r} is empty: the problem has no tests")
    if not all(isinstance(t, str) for t in tests):
        raise RowError(name, f"field {name!r} must be a list of assert strings")
    return [_crlf(t) for t in tests]


def entry_point(first_assert: str, code: str = "") -> str:
    """The function under test: the first called name that the solution defines (else not a builtin)."""
    try:
        called = [
            n.func.id for n in ast.walk(parse(first_assert)) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
        ]
    except SyntaxError as e:
        raise RowError("test_list", f"first test is not valid Python ({e.msg})") from e
    defined = _defined_functions(code)
    for name in called:
        if name in defined:
            return name
    for name in called:
        if not hasattr(builtins, name):
            return name
    raise RowError("test_list", f"cannot find the function under test in {first_assert!r}")


def _defined_functions(code: str) -> set[str]:
    try:
        with warnings.catch_warnings():  # old MBPP code has invalid escape sequences
            warnings.simplefilter("ignore")
            tree = parse(code)
        return {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    except SyntaxError:
        return set()


def _crlf(text: str) -> str:
    return text.replace("\r\n", "\n")
