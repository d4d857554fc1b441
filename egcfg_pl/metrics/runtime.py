"""Speed metrics: execution time of passing programs, and generation throughput."""

from __future__ import annotations

import torch
from egcfg_pl.metrics.base import SumStateMetric

_NAN = float("nan")


class RuntimeEfficiency(SumStateMetric):
    """Mean execution seconds of the programs that pass all their tests (lower is better).

    Failing programs are left out: a timeout or an early crash says nothing about efficiency.
    ``update(seconds, passed)`` takes one entry per program; NaN when no program passed.
    """

    higher_is_better = False

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("seconds_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("num_passing", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, seconds: torch.Tensor, passed: torch.Tensor) -> None:
        secs = torch.as_tensor(seconds, dtype=torch.float64).flatten()
        ok = torch.as_tensor(passed, dtype=torch.bool).flatten()
        if secs.shape != ok.shape:
            raise ValueError(f"seconds has {secs.numel()} entries but passed has {ok.numel()}")
        if bool((secs < 0).any()):
            raise ValueError(f"seconds must be >= 0, got {secs.tolist()}")
        self.seconds_sum += secs[ok].sum().to(self.seconds_sum.device)
        self.num_passing += int(ok.sum())

    def compute(self) -> torch.Tensor:
        if int(self.num_passing) == 0:
            return torch.tensor(_NAN, dtype=torch.float64)
        return self.seconds_sum / self.num_passing


class GenerationThroughput(SumStateMetric):
    """Generated tokens per second of generation wall time, summed over updates (NaN without time)."""

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("tokens", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("seconds", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, tokens: int, seconds: float) -> None:
        if tokens < 0 or seconds < 0:
            raise ValueError(f"gen_tokens and gen_seconds must be >= 0, got {tokens} and {seconds}")
        self.tokens += int(tokens)
        self.seconds += float(seconds)

    def compute(self) -> torch.Tensor:
        if float(self.seconds) <= 0.0:
            return torch.tensor(_NAN, dtype=torch.float64)
        return self.tokens.double() / self.seconds
