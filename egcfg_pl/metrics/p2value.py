"""Distribution of P2Value, possibility and pass rate over candidates (means + fixed-bin histograms)."""

from __future__ import annotations

import torch
from egcfg_pl.metrics.base import SumStateMetric

QUANTITIES: tuple[str, ...] = ("p2value", "possibility", "pass_rate")
_EPS = 1e-9  # float round-off allowed outside [0, 1]


class P2ValueMetric(SumStateMetric):
    """Mean and histogram of P2Value = α·P + (1−α)·pass_rate (BTP paper, Eq. 5) and of its two parts.

    ``update(p2values, possibilities, pass_rates)`` takes one entry per candidate. A NaN possibility
    means "unknown" (an API without log-probs): it is left out of the possibility statistics only.
    All three quantities lie in [0, 1]; the histograms use ``num_bins`` equal bins on [0, 1] (the
    last bin is closed, so 1.0 lands in it). Every state is a sum, so DDP ranks combine exactly.
    """

    higher_is_better = None

    def __init__(self, num_bins: int = 10, **kwargs) -> None:
        super().__init__(**kwargs)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_bins = num_bins
        for name in QUANTITIES:
            self.add_state(f"{name}_sum", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{name}_count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{name}_hist", torch.zeros(num_bins, dtype=torch.long), dist_reduce_fx="sum")

    @property
    def bin_edges(self) -> torch.Tensor:
        return torch.linspace(0.0, 1.0, self.num_bins + 1, dtype=torch.float64)

    def update(self, p2values: torch.Tensor, possibilities: torch.Tensor, pass_rates: torch.Tensor) -> None:
        values = {
            name: torch.as_tensor(v, dtype=torch.float64).flatten()
            for name, v in zip(QUANTITIES, (p2values, possibilities, pass_rates))
        }
        sizes = {name: v.numel() for name, v in values.items()}
        if len(set(sizes.values())) != 1:
            raise ValueError(f"p2values, possibilities and pass_rates differ in length: {sizes}")
        for name, v in values.items():
            self._add(name, v[~torch.isnan(v)] if name == "possibility" else v)

    def _add(self, name: str, v: torch.Tensor) -> None:
        if bool(torch.isnan(v).any()) or bool(((v < -_EPS) | (v > 1 + _EPS)).any()):
            raise ValueError(f"{name} values must lie in [0, 1], got {v.tolist()}")
        bins = (v.clamp(0.0, 1.0) * self.num_bins).floor().long().clamp(max=self.num_bins - 1)
        hist = getattr(self, f"{name}_hist")
        setattr(self, f"{name}_hist", hist + torch.bincount(bins, minlength=self.num_bins).to(hist.device))
        setattr(self, f"{name}_sum", getattr(self, f"{name}_sum") + v.sum().to(hist.device))
        setattr(self, f"{name}_count", getattr(self, f"{name}_count") + v.numel())

    def compute(self) -> dict[str, torch.Tensor]:
        """``{"p2value_mean", "possibility_mean", "pass_rate_mean"}``; NaN where nothing was counted."""
        out = {}
        for name in QUANTITIES:
            count = getattr(self, f"{name}_count")
            total = getattr(self, f"{name}_sum")
            out[f"{name}_mean"] = total / count if int(count) else torch.tensor(float("nan"), dtype=torch.float64)
        return out

    def histograms(self) -> dict[str, list[int]]:
        """Counts per bin (edges :attr:`bin_edges`) for each quantity, summed over DDP ranks.

        Under DDP this is a collective call, like :meth:`compute`: every rank must make it.
        """
        fresh = not self._is_synced  # not already inside compute()
        with self.sync_context(should_sync=fresh, should_unsync=fresh):
            return {name: getattr(self, f"{name}_hist").tolist() for name in QUANTITIES}
