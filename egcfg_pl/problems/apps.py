"""APPS (Hendrycks et al. 2021): stdin/stdout and call-based problems, ids ``apps/<split>/<problem_id>``.

The hub's train and test splits both number ``problem_id`` from 0, so the split is part of the id
(``apps/train/42`` and ``apps/test/42`` are different problems); a row without a ``split`` gets
``apps/<problem_id>``.

``input_output`` is a dict in the local subset and a JSON string on the hub (``solutions`` too).
Stdin problems give ``stdio`` tests (an input given as a list of lines is joined with newlines);
problems with ``fn_name`` give ``call`` tests with ``args`` = the input list. APPS wraps many
call outputs in a one-element list, and its reference harness accepts ``result == outputs[i]`` or
``result == outputs[i][0]``; we store the unwrapped value ``outputs[i][0]`` for a one-element
list and record which tests were unwrapped in ``meta["wrapped_expected"]`` so a checker can accept
the wrapped form too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.problems.rows import RowError, convert_rows, hub_json_rows, read_rows, require, with_split

HUB_REPO = "codeparrot/apps"  # its loader is a script, so the JSONL files are read directly
DIFFICULTIES = ("introductory", "interview", "competition")
FIELDS = ("problem_id", "question", "input_output", "difficulty", "starter_code (optional)", "solutions (optional)")


def load(split: str = "test", path: str | Path | None = None, skip_malformed: bool = False) -> list[Problem]:
    """APPS problems from ``path`` (rows carry their ``split``) or the hub's ``<split>.jsonl``."""
    if path is not None:
        rows = read_rows(path)
    else:
        splits = ("train", "test") if split == "all" else (split,)
        rows = [row for s in splits for row in with_split(hub_json_rows(HUB_REPO, f"{s}.jsonl", dataset="apps"), s)]
    return convert_rows(rows, to_problem, dataset="apps", expected_fields=FIELDS, skip_malformed=skip_malformed)


def to_problem(row: dict[str, Any]) -> Problem:
    problem_id = require(row, "problem_id", (int, str))
    io = _json_field(row, "input_output", dict)
    tests, wrapped = _tests(io)
    fn_name = io.get("fn_name") or ""
    split = str(row.get("split") or "")
    return Problem(
        id=f"apps/{split}/{problem_id}" if split else f"apps/{problem_id}",
        source="apps",
        split=split,
        statement=require(row, "question", str),
        tests=tests,
        prompt=row.get("starter_code") or "",
        entry_point=fn_name,
        solutions=tuple(_json_field(row, "solutions", list, optional=True)),
        difficulty=str(require(row, "difficulty", str)),
        meta={"url": row.get("url", ""), "wrapped_expected": wrapped} if fn_name else {"url": row.get("url", "")},
    )


def _json_field(row: dict[str, Any], name: str, kind: type, optional: bool = False) -> Any:
    """A field that is either already parsed or a JSON string (the hub stores both as strings)."""
    if optional and not row.get(name):
        return kind()
    value = require(row, name, (kind, str))
    if isinstance(value, str) and not value.strip():
        raise RowError(name, f"field {name!r} is empty" + (": the problem has no tests" if name == "input_output" else ""))
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(name, f"field {name!r} is not valid JSON ({e.msg})") from e
    if not isinstance(value, kind):
        raise RowError(name, f"field {name!r} is {type(value).__name__}, expected a {kind.__name__}")
    return value


def _tests(io: dict[str, Any]) -> tuple[tuple[TestCase, ...], tuple[bool, ...]]:
    inputs, outputs = io.get("inputs"), io.get("outputs")
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise RowError("input_output", "field 'input_output' needs lists 'inputs' and 'outputs'")
    if not inputs or len(inputs) != len(outputs):
        raise RowError("input_output", f"no tests: {len(inputs)} inputs and {len(outputs)} outputs in 'input_output'")
    fn_name = io.get("fn_name")
    if fn_name:
        cases = [_call_case(fn_name, args, out) for args, out in zip(inputs, outputs)]
        return tuple(c for c, _ in cases), tuple(w for _, w in cases)
    return tuple(TestCase(kind="stdio", input=_text(i), output=_text(o)) for i, o in zip(inputs, outputs)), ()


def _call_case(fn_name: str, args: Any, output: Any) -> tuple[TestCase, bool]:
    if not isinstance(args, list):
        raise RowError("input_output", f"call inputs must be argument lists, got {type(args).__name__}")
    wrapped = isinstance(output, list) and len(output) == 1
    expected = output[0] if wrapped else output
    return TestCase(kind="call", fn_name=fn_name, args=tuple(args), expected=expected), wrapped


def _text(value: Any) -> str:
    if isinstance(value, list):
        return "\n".join(str(v) for v in value)
    if not isinstance(value, str):
        raise RowError("input_output", f"stdin/stdout values must be strings, got {type(value).__name__}")
    return value
