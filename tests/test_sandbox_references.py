"""The shared data's reference solutions pass their own tests through the executor (no regressions).

Expected counts come from /work/shared/data/README.md (measured there with an independent harness).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

from egcfg_pl.problems import load_problems
from egcfg_pl.sandbox import Executor, Status
from egcfg_pl.sandbox.layers import namespaces_available

pytestmark = pytest.mark.skipif(
    not (namespaces_available() and os.geteuid() == 0), reason="needs root + Linux namespaces"
)


@pytest.fixture(scope="module")
def ex():
    with Executor(timeout=3.0) as executor:
        yield executor


def _slow_ones_pass_with_more_time(problems, verdicts) -> list[str]:
    """Reference solutions that only timed out get one more try with a generous timeout."""
    retry = [(p, v) for p, v in zip(problems, verdicts)
             if not v.all_passed and {r.status for r in v.results} <= {Status.PASSED, Status.TIMEOUT}]
    with Executor(timeout=30.0) as patient:
        again = patient.run_many([(p, p.solutions[0]) for p, _ in retry])
    fixed = {p.id for (p, _), v in zip(retry, again) if v.all_passed}
    return [p.id for p, v in zip(problems, verdicts) if not v.all_passed and p.id not in fixed]


@pytest.mark.parametrize(("dataset", "filename", "count"), [
    ("mbpp", "mbpp.jsonl", 974), ("mbpp_sanitized", "mbpp_sanitized.jsonl", 427),
])
def test_mbpp_references_pass_every_assert(ex, shared_data, dataset, filename, count):
    problems = load_problems(dataset, split="all", path=shared_data / filename)
    assert len(problems) == count
    verdicts = ex.run_many([(p, p.solutions[0]) for p in problems])
    assert _slow_ones_pass_with_more_time(problems, verdicts) == []


def _benchmark_module():
    """``benchmarks/sandbox.py`` by path (``benchmarks`` is a top-level folder, not an installed package)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "sandbox.py"
    spec = importlib.util.spec_from_file_location("benchmarks_sandbox", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_humaneval_canonical_pass_and_corrupted_fail(ex):
    programs = _benchmark_module().programs
    problems = load_problems("humaneval")
    jobs = programs(problems)
    verdicts = ex.run_many([(p, prog) for p, prog, _ in jobs])
    assert [v.all_passed for v in verdicts] == [should for _, _, should in jobs]


def test_apps_one_of_first_three_references_passes(ex, shared_data):
    problems = load_problems("apps", split="all", path=shared_data / "apps_subset.jsonl")
    passing: set[str] = set()
    for k in range(3):
        todo = [p for p in problems if len(p.solutions) > k and p.id not in passing]
        passing |= {p.id for p, v in zip(todo, ex.run_many([(p, p.solutions[k]) for p in todo])) if v.all_passed}
    assert len(passing) >= 146, sorted({p.id for p in problems} - passing)  # data README: 146 / 150


def test_codecontests_ships_no_reference_solutions(shared_data):
    """Nothing to replay: the subset keeps only ``reference_solution_passed`` counts (see the data README)."""
    problems = load_problems("codecontests", split="all", path=shared_data / "codecontests_subset.jsonl")
    assert len(problems) == 300 and not any(p.solutions for p in problems)
    assert all(t.kind == "stdio" for p in problems for t in p.tests)
