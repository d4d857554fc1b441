"""CodeGenMetrics, the JSON report and evaluate_candidates, on two toy problems with hand-known results."""

from __future__ import annotations

import json
import math
import time

import pytest

from egcfg_pl.metrics import CodeGenMetrics, EvalReport, evaluate_candidates
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.replay.experience import p2value
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict


class InProcessExecutor:
    """A small real executor for trusted toy programs: ``exec`` in this process, assert tests only."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def run_many(self, jobs):
        self.batches.append(len(jobs))
        return [self._run(problem, program) for problem, program in jobs]

    @staticmethod
    def _run(problem: Problem, program: str) -> Verdict:
        start = time.perf_counter()
        try:
            code = compile(program, "<candidate>", "exec")
        except SyntaxError:
            return Verdict(problem.id, tuple(TestResult(Status.SYNTAX) for _ in problem.tests))
        results = []
        for test in problem.tests:
            t0 = time.perf_counter()
            env: dict = {}
            try:
                exec(code, env)
                exec(problem.test_setup, env)
                exec(test.code, env)
                status = Status.PASSED
            except AssertionError:
                status = Status.FAILED
            except Exception:
                status = Status.ERROR
            results.append(TestResult(status, time.perf_counter() - t0))
        return Verdict(problem.id, tuple(results), time.perf_counter() - start)


ADD_REF = "def add(a, b):\n    return a + b\n"
ADD = Problem(
    id="toy/add",
    source="custom",
    split="test",
    statement="Add two numbers.",
    tests=(TestCase("assert", code="assert add(1, 2) == 3"), TestCase("assert", code="assert add(-1, 1) == 0")),
    entry_point="add",
    solutions=(ADD_REF,),
)
SQ = Problem(
    id="toy/sq",
    source="custom",
    split="test",
    statement="Square a number.",
    tests=tuple(TestCase("assert", code=f"assert sq({x}) == {x * x}") for x in (2, 3, 0)),
    entry_point="sq",
)


def cand(problem: Problem, program: str, rank: int, logprob: float | None = -2.0, tokens: int = 10) -> Candidate:
    return Candidate(problem.id, program, program, logprob, tokens, source="toy", rank=rank)


# expected pass rates, in list order
CANDIDATES = [
    cand(ADD, "def add(a, b):\n    # the sum\n    return a + b\n", 0),  # 1.0, exact match of the reference
    cand(ADD, "def add(a, b):\n    return a - b\n", 1, logprob=None),  # 0.0
    cand(ADD, "def add(a, b):\n    return abs(a) + b\n", 2),  # 0.5
    cand(SQ, "def sq(x):\n    return x * x\n", 1, logprob=-0.5, tokens=5),  # 1.0 but not first
    cand(SQ, "def sq(x):\n    return x + x\n", 0),  # 2/3, the first (rank 0) answer
    cand(SQ, "def sq(x:\n    return x\n", 2),  # syntax error: 0.0
]
RATES = [1.0, 0.0, 0.5, 1.0, 2 / 3, 0.0]


def run_groups(executor=None):
    executor = executor or InProcessExecutor()
    groups = {ADD.id: (ADD, CANDIDATES[:3]), SQ.id: (SQ, CANDIDATES[3:])}
    out = {}
    for pid, (problem, cands) in groups.items():
        out[pid] = (problem, cands, executor.run_many([(problem, c.program) for c in cands]))
    return out


def test_executor_fake_gives_expected_pass_rates():
    verdicts = [v for _, _, vs in run_groups().values() for v in vs]
    assert [v.pass_rate for v in verdicts] == pytest.approx(RATES)
    assert verdicts[-1].results[0].status is Status.SYNTAX


def test_codegen_metrics_hand_values():
    metrics = CodeGenMetrics(ks=(1, 2, 3, 5), p2value_alpha=0.5)
    for problem, cands, verdicts in run_groups().values():
        metrics.update(problem, cands, verdicts, gen_seconds=2.0, gen_tokens=sum(c.num_tokens for c in cands))
    out = metrics.compute()
    # each problem: n=3, c=1
    assert out["pass@1"] == pytest.approx(1 / 3)
    assert out["pass@2"] == pytest.approx(1 - 1 / 3)  # 1 - C(2,2)/C(3,2)
    assert out["pass@3"] == pytest.approx(1.0)
    assert "pass@5" not in out and metrics.missing_ks() == (5,)
    assert out["avg_pass_rate"] == pytest.approx(sum(RATES) / 6)
    assert out["avg_pass_rate_macro"] == pytest.approx((1.5 / 3 + (5 / 3) / 3) / 2)
    assert out["strict_accuracy"] == pytest.approx(0.5)  # add's rank 0 passes, sq's rank 0 does not
    assert out["exact_match"] == pytest.approx(1.0)  # sq has no reference: not counted
    assert out["tokens_per_s"] == pytest.approx((30 + 25) / 4.0)
    possibilities = [None if c.logprob is None else math.exp(c.logprob / c.num_tokens) for c in CANDIDATES]
    expected_p2 = [p2value(p, r, 0.5) for p, r in zip(possibilities, RATES)]
    assert out["p2value_mean"] == pytest.approx(sum(expected_p2) / 6)
    assert out["possibility_mean"] == pytest.approx(sum(p for p in possibilities if p is not None) / 5)
    assert out["num_problems"] == 2 and out["num_candidates"] == 6
    assert 0.0 < out["runtime_s"] < 5.0
    assert sum(metrics.histograms()["pass_rate"]) == 6
    assert metrics.histograms()["pass_rate"][0] == 2  # the two 0.0 pass rates


def test_codegen_metrics_merge_equals_single():
    groups = list(run_groups().values())
    whole, first, second = (CodeGenMetrics(ks=(1, 2)) for _ in range(3))
    for problem, cands, verdicts in groups:
        whole.update(problem, cands, verdicts)
    first.update(*groups[0])
    second.update(*groups[1])
    first.merge_state(second)
    merged, expected = first.compute(), whole.compute()
    assert merged.keys() == expected.keys()
    for key, value in expected.items():
        assert merged[key] == pytest.approx(value, nan_ok=True), key
    assert first.histograms() == whole.histograms()


def test_codegen_metrics_reset():
    metrics = CodeGenMetrics(ks=(1,))
    problem, cands, verdicts = run_groups()[ADD.id]
    metrics.update(problem, cands, verdicts)
    metrics.reset()
    metrics.update(problem, cands[:1], verdicts[:1])
    assert metrics.compute()["pass@1"] == 1.0 and metrics.compute()["num_candidates"] == 1


def test_codegen_metrics_rejects_mismatched_groups():
    metrics = CodeGenMetrics(ks=(1,))
    problem, cands, verdicts = run_groups()[ADD.id]
    with pytest.raises(ValueError, match="3 candidates but 2 verdicts"):
        metrics.update(problem, cands, verdicts[:2])
    with pytest.raises(ValueError, match="other problems.*toy/sq"):
        metrics.update(problem, [*cands[:2], CANDIDATES[3]], verdicts)
    with pytest.raises(ValueError, match="no candidates"):
        metrics.update(problem, [], [])
    with pytest.raises(ValueError, match="possibility_form"):
        CodeGenMetrics(possibility_form="geometric")


# ---------------------------------------------------------------- evaluate_candidates + report


def test_evaluate_candidates_builds_report_in_one_batch():
    executor = InProcessExecutor()
    report = evaluate_candidates([ADD, SQ], CANDIDATES, executor, ks=(1, 3, 10), config={"dataset": "toy"})
    assert executor.batches == [6]
    assert report.metrics["pass@1"] == pytest.approx(1 / 3) and report.missing_ks == [10]
    add, sq = report.problems
    assert (add.problem_id, add.n, add.c, add.exact_match) == ("toy/add", 3, 1, True)
    assert (sq.problem_id, sq.n, sq.c, sq.exact_match) == ("toy/sq", 3, 1, None)
    assert [c.pass_rate for c in add.candidates + sq.candidates] == pytest.approx(RATES)
    assert sq.candidates[2].statuses == ["syntax_error"] * 3
    assert add.candidates[1].logprob is None and add.candidates[1].possibility is None
    assert add.candidates[0].possibility == pytest.approx(math.exp(-0.2))
    assert report.config == {"dataset": "toy"}


def test_evaluate_candidates_missing_and_unknown_problems():
    executor = InProcessExecutor()
    with pytest.raises(ValueError, match=r"1 problem\(s\) have no candidates: \['toy/sq'\]"):
        evaluate_candidates([ADD, SQ], CANDIDATES[:3], executor, ks=(1,))
    with pytest.raises(ValueError, match="not given: \\['toy/sq'\\]"):
        evaluate_candidates([ADD], CANDIDATES, executor, ks=(1,))
    report = evaluate_candidates([ADD, SQ], CANDIDATES[:3], executor, ks=(1,), allow_missing=True)
    assert report.unscored_problem_ids == ["toy/sq"]
    assert report.metrics["num_problems"] == 1 and report.metrics["pass@1"] == pytest.approx(1 / 3)


def _strict_json(text: str):
    def reject(constant):
        raise AssertionError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=reject)


def test_report_json_round_trip(tmp_path):
    report = evaluate_candidates([ADD, SQ], CANDIDATES, InProcessExecutor(), ks=(1, 2), config={"k": [1, 2]})
    assert math.isnan(report.metrics["tokens_per_s"])  # no generation timings here
    path = report.to_json(tmp_path / "sub" / "results.json")
    data = _strict_json(path.read_text())  # NaN is written as null, not as invalid JSON
    assert data["metrics"]["tokens_per_s"] is None
    loaded = EvalReport.from_json(path)
    assert math.isnan(loaded.metrics.pop("tokens_per_s"))
    report.metrics.pop("tokens_per_s")
    assert loaded == report
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]  # no temp file left


def test_report_write_failure_keeps_old_file(tmp_path):
    path = tmp_path / "results.json"
    path.write_text("old")
    bad = EvalReport(metrics={"pass@1": 0.5}, problems=[], config={"sampler": object()})
    with pytest.raises(TypeError):
        bad.to_json(path)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
