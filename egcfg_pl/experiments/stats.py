"""Uncertainty of held-out results: 95% intervals over problems, read from an evaluation JSON.

A held-out set of a few dozen problems gives wide intervals; reporting them keeps a 2-problem
difference from reading as an improvement.
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
    """Wilson score interval of a binomial proportion (Wilson 1927); sensible at 0 / n successes."""
    if n <= 0:
        return (math.nan, math.nan)
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
    """Mean (tuned − base) over the problems both were scored on, with a paired bootstrap 95% interval."""
    common = sorted(set(tuned) & set(base))
    diffs = [tuned[pid] - base[pid] for pid in common]
    if not diffs:
        return {"mean": None, "ci95": None, "num_problems": 0}
    return {"mean": float(np.mean(diffs)), "ci95": list(bootstrap_ci(diffs, samples, seed)), "num_problems": len(common)}


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
