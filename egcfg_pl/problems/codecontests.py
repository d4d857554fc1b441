"""CodeContests (Li et al. 2022): stdin/stdout problems, ids ``codecontests/<name>``.

Two row schemas are read:

- the hub schema (``deepmind/code_contests``): ``public_tests`` / ``private_tests`` /
  ``generated_tests`` dicts of ``input`` / ``output`` lists and a ``solutions`` dict of
  ``language`` ints and ``solution`` strings, of which only Python 3 (language 3) is kept;
- the local subset (``codecontests_subset.jsonl`` in a data folder): a ``tests`` list of ``{input, output, in_statement}``.
  Its tests' origin is not recorded, so ``"public"`` selects the ``in_statement`` tests and
  ``"private"`` / ``"generated"`` both select the others.

``test_sets`` picks among public/private/generated (all by default); public tests are marked public.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.problems.rows import RowError, convert_rows, hub_rows, read_rows, require, with_split

HUB_REPO = "deepmind/code_contests"
HUB_SPLITS = ("train", "valid", "test")
TEST_SETS = ("public", "private", "generated")
PYTHON3 = 3  # the hub's Language enum: 0 unknown, 1 Python 2, 2 C++, 3 Python 3, 4 Java
FIELDS = ("name", "description", "tests (local) or public_tests/private_tests/generated_tests (hub)")


def load(
    split: str = "test",
    path: str | Path | None = None,
    test_sets: list[str] | None = None,
    skip_malformed: bool = False,
) -> list[Problem]:
    """CodeContests problems from ``path`` (rows carry their ``split``) or the hub."""
    sets = tuple(test_sets) if test_sets else TEST_SETS
    unknown = set(sets) - set(TEST_SETS)
    if unknown:
        raise ValueError(f"test_sets {sorted(unknown)} unknown; choose among {list(TEST_SETS)}")
    if path is not None:
        rows = read_rows(path)
    else:
        hub_split = "valid" if split == "validation" else split
        splits = HUB_SPLITS if split == "all" else (hub_split,)
        rows = [r for s in splits for r in with_split(hub_rows(HUB_REPO, s, dataset="codecontests"), s)]
    return convert_rows(
        rows,
        lambda r: to_problem(r, sets),
        dataset="codecontests",
        expected_fields=FIELDS,
        skip_malformed=skip_malformed,
    )


def to_problem(row: dict[str, Any], test_sets: tuple[str, ...] = TEST_SETS) -> Problem:
    name = require(row, "name", str)
    tests = _local_tests(row, test_sets) if "tests" in row else _hub_tests(row, test_sets)
    if not tests:
        raise RowError("tests", f"no tests in the selected test_sets {list(test_sets)}")
    difficulty = row.get("difficulty")
    return Problem(
        id=f"codecontests/{name}",
        source="codecontests",
        split=str(row.get("split") or ""),
        statement=require(row, "description", str),
        tests=tests,
        solutions=_python3_solutions(row.get("solutions")),
        difficulty=str(difficulty) if difficulty is not None else str(row.get("difficulty_raw") or ""),
        meta={k: row[k] for k in ("cf_tags", "source", "reference_solution_passed", "time_limit") if k in row},
    )


def _local_tests(row: dict[str, Any], test_sets: tuple[str, ...]) -> tuple[TestCase, ...]:
    tests = []
    for i, t in enumerate(require(row, "tests", list)):
        if not isinstance(t, dict) or not isinstance(t.get("input"), str) or not isinstance(t.get("output"), str):
            raise RowError("tests", f"tests[{i}] needs string 'input' and 'output'")
        public = bool(t.get("in_statement", False))
        if (public and "public" in test_sets) or (not public and {"private", "generated"} & set(test_sets)):
            tests.append(TestCase(kind="stdio", input=t["input"], output=t["output"], public=public))
    return tuple(tests)


def _hub_tests(row: dict[str, Any], test_sets: tuple[str, ...]) -> tuple[TestCase, ...]:
    if not any(f"{s}_tests" in row for s in TEST_SETS):
        raise RowError("tests", "missing field 'tests' (local schema) or 'public_tests' (hub schema)")
    tests = []
    for s in test_sets:
        field = f"{s}_tests"
        block = row.get(field) or {"input": [], "output": []}
        inputs, outputs = (block.get("input"), block.get("output")) if isinstance(block, dict) else (None, None)
        if not isinstance(inputs, list) or not isinstance(outputs, list) or len(inputs) != len(outputs):
            raise RowError(field, f"field {field!r} needs equally long 'input' and 'output' lists")
        tests += [TestCase(kind="stdio", input=i, output=o, public=s == "public") for i, o in zip(inputs, outputs)]
    return tuple(tests)


def _python3_solutions(solutions: Any) -> tuple[str, ...]:
    if isinstance(solutions, dict):  # hub: parallel lists of language ids and code
        pairs = zip(solutions.get("language") or [], solutions.get("solution") or [])
        return tuple(code for lang, code in pairs if lang == PYTHON3)
    if isinstance(solutions, list):
        return tuple(s for s in solutions if isinstance(s, str))
    return ()
