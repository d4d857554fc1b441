"""Relative success rate (RSR): how a model's success rate compares with a baseline's."""

from __future__ import annotations

import math


def relative_success_rate(model_rate: float, baseline_rate: float) -> float:
    """RSR = model_rate / baseline_rate.

    Both rates are success rates in [0, 1] measured the same way on the same problems (e.g. pass@1
    of the BTP-tuned target vs. the untuned target, or of the target vs. the source model in the
    big-to-small setting). RSR > 1 means the model beats the baseline; RSR = 0.5 means it solves
    half as often.

    Zero baseline: the ratio is undefined, and no finite number would be honest. It returns
    ``math.inf`` when the model succeeds somewhere (``model_rate > 0``) and ``math.nan`` when both
    are 0; report the two raw rates alongside RSR in that case.
    """
    for name, rate in (("model_rate", model_rate), ("baseline_rate", baseline_rate)):
        if not 0.0 <= rate <= 1.0:  # also rejects NaN
            raise ValueError(f"{name} must be a success rate in [0, 1], got {rate}")
    if baseline_rate == 0.0:
        return math.inf if model_rate > 0.0 else math.nan
    return model_rate / baseline_rate
