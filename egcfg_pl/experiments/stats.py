"""Uncertainty of held-out results: 95% intervals over problems, read from an evaluation JSON, and
paired tests of a variant against its baseline.

A held-out set of a few dozen problems gives wide intervals; reporting them keeps a 2-problem
difference from reading as an improvement. A step compares many variants with one baseline, so the
paired tests' p-values are Holm-adjusted across the step (:func:`holm`); the intervals are per comparison
(unadjusted) and are labelled so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from egcfg_pl.metrics.report import EvalReport

Z95 = 1.959963984540054  # two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (Wilson 1927); sensible at 0 / n successes, so it
    suits pass@1 over a few dozen problems where the normal interval leaves [0, 1]."""
    if n <= 0:
        return (math.nan, math.nan)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be in [0, n] = [0, {n}], got {successes}")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo = 0.0 if successes == 0 else max(0.0, centre - half)  # exact bounds at the edges (no rounding residue)
    hi = 1.0 if successes == n else min(1.0, centre + half)
    return (lo, hi)


def bootstrap_ci(values: Sequence[float], samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap 95% interval of the mean (problems resampled with replacement)."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return (math.nan, math.nan)
    idx = np.random.default_rng(seed).integers(0, x.size, size=(samples, x.size))
    means = x[idx].mean(axis=1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def paired_delta(
    tuned: dict[str, float], base: dict[str, float], samples: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """Mean (tuned − base) over the problems both were scored on, with a paired bootstrap 95% interval
    (unadjusted for multiple comparisons) and the paired exact test (:func:`sign_test`)."""
    common = sorted(set(tuned) & set(base))
    diffs = [tuned[pid] - base[pid] for pid in common]
    if not diffs:
        return {"mean": None, "ci95": None, "num_problems": 0, "test": None}
    return {
        "mean": float(np.mean(diffs)),
        "ci95": list(bootstrap_ci(diffs, samples, seed)),
        "ci95_adjusted": False,
        "num_problems": len(common),
        "test": sign_test(diffs),
    }


def exact_mcnemar_p(better: int, worse: int) -> float:
    """Two-sided exact McNemar p-value: the binomial sign test on the discordant pairs.

    ``better`` problems are solved only by the tuned model, ``worse`` only by the baseline; under "no
    difference" each discordant problem is a fair coin, so p = min(1, 2·P(Bin(n, ½) <= min(better, worse))).
    Concordant problems carry no information about the difference and do not enter. No pairs gives 1.
    """
    if better < 0 or worse < 0:
        raise ValueError(f"discordant counts must be >= 0, got {better} and {worse}")
    n = better + worse
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(better, worse) + 1)) / 2**n
    return min(1.0, 2.0 * tail)


def sign_test(diffs: Sequence[float]) -> dict[str, Any]:
    """Paired test of per-problem differences (tuned − base): counts of problems better / worse / tied and the
    exact two-sided sign-test p-value. For pass/fail scores (one answer per problem, differences in
    {−1, 0, 1}) this is exactly McNemar's exact test, and it is named so."""
    x = np.asarray(diffs, dtype=np.float64)
    better, worse = int((x > 0).sum()), int((x < 0).sum())
    binary = bool(np.all(np.isin(x, (-1.0, 0.0, 1.0))))
    return {
        "method": "exact McNemar" if binary else "exact sign test",
        "better": better,
        "worse": worse,
        "ties": int(x.size - better - worse),
        "p_value": exact_mcnemar_p(better, worse),
    }


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment (family-wise error) of the p-values of one family; None stays None.

    Sorted ascending, the i-th of m p-values becomes max over j <= i of min(1, (m − j + 1)·p_(j)).
    """
    known = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(known)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for j, (p, i) in enumerate(known):
        running = max(running, min(1.0, (m - j) * p))
        adjusted[i] = running
    return adjusted


def per_problem(report: EvalReport) -> dict[str, dict[str, float]]:
    """Per-problem scores: ``pass@1`` = c / n (the unbiased pass@1 of one problem) and ``pass_rate``
    = the mean test pass rate of its candidates."""
    return {
        "pass@1": {p.problem_id: p.c / p.n for p in report.problems},
        "avg_pass_rate": {p.problem_id: p.mean_pass_rate for p in report.problems},
    }


def summarize_eval(path: str | Path, samples: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Mean and 95% interval of pass@1 and the average test pass rate, over the problems of one eval JSON.

    pass@1 uses the Wilson interval when every problem has one candidate (a binomial count of solved
    problems), else the bootstrap; the average pass rate always uses the bootstrap.
    """
    report = EvalReport.from_json(path)
    scores = per_problem(report)
    n = len(report.problems)
    out: dict[str, Any] = {"num_problems": n}
    for name, by_problem in scores.items():
        values = list(by_problem.values())
        mean = float(np.mean(values)) if values else math.nan
        if name == "pass@1" and all(p.n == 1 for p in report.problems):
            ci, method = wilson_interval(sum(p.c for p in report.problems), n), "wilson"
        else:
            ci, method = bootstrap_ci(values, samples, seed), "bootstrap"
        out[name] = {"mean": mean, "ci95": list(ci), "method": method}
    return out
