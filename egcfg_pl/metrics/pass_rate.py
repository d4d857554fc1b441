"""Test-level metrics: average test pass rate and strict accuracy (APPS, Hendrycks et al. 2021)."""

from __future__ import annotations

import torch
from egcfg_pl.metrics.base import SumStateMetric


class AveragePassRate(SumStateMetric):
    """Average fraction of tests passed (APPS "test case average"; the BTP paper's pass rate, Eq. 4,
    normalised to [0, 1]).

    ``update(pass_rates)`` is called once per problem with the pass rates of all its candidates.
    :meth:`compute` returns two averages, equal when every problem has the same number of candidates:

    - ``avg_pass_rate``: mean over all candidates of all problems;
    - ``avg_pass_rate_macro``: mean over problems of each problem's mean pass rate;

    plus the (DDP-summed) counts ``num_problems`` and ``num_candidates`` behind them.
    """

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("candidate_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_candidates", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("problem_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_problems", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pass_rates: torch.Tensor) -> None:
        rates = torch.as_tensor(pass_rates, dtype=torch.float64).flatten()
        if rates.numel() == 0:
            raise ValueError("pass_rates is empty: a problem needs at least one candidate")
        if bool(((rates < 0) | (rates > 1)).any()):
            raise ValueError(f"pass_rates must lie in [0, 1], got {rates.tolist()}")
        rates = rates.to(self.candidate_sum.device)
        self.candidate_sum += rates.sum()
        self.num_candidates += rates.numel()
        self.problem_sum += rates.mean()
        self.num_problems += 1

    def compute(self) -> dict[str, torch.Tensor]:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return {
            "avg_pass_rate": self.candidate_sum / self.num_candidates if self.num_candidates else nan,
            "avg_pass_rate_macro": self.problem_sum / self.num_problems if self.num_problems else nan,
            "num_problems": self.num_problems.clone(),
            "num_candidates": self.num_candidates.clone(),
        }


class StrictAccuracy(SumStateMetric):
    """Fraction of problems whose first candidate passes every test (APPS "strict accuracy").

    "First" is the caller's choice of the one answer per problem; :class:`CodeGenMetrics` uses the
    lowest-``rank`` candidate (the greedy output / best beam / first sample), so the metric does not
    grow with the number of samples the way pass@k does. ``update`` takes one bool per problem.
    """

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("num_solved", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_problems", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, first_all_passed: torch.Tensor | bool) -> None:
        solved = torch.as_tensor(first_all_passed, dtype=torch.bool).flatten()
        self.num_solved += int(solved.sum())
        self.num_problems += solved.numel()

    def compute(self) -> torch.Tensor:
        if int(self.num_problems) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.num_solved.double() / self.num_problems
