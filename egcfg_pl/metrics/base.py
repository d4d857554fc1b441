"""The base of every metric here: states are sums, so DDP ranks and shards combine exactly."""

from __future__ import annotations

from typing import Any

from torchmetrics import Metric


class SumStateMetric(Metric):
    """A torchmetrics ``Metric`` whose states all use ``dist_reduce_fx="sum"``.

    ``merge_state`` here also drops the cached ``compute()`` result: torchmetrics 1.9 keeps it, so a
    metric computed before a merge would otherwise return the stale value.
    """

    full_state_update = False
    is_differentiable = False

    def merge_state(self, incoming_state: dict[str, Any] | Metric) -> None:
        super().merge_state(incoming_state)
        self._computed = None
