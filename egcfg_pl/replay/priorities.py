"""Prioritized sampling distributions over replay experiences (BTP paper, Sec. 3.3).

``power``:  P(i) = p_i^a / Σ_k p_k^a with p_i = P2Value_i            (paper Eq. 6, "proportional")
``rank``:   P(i) = p_i^a / Σ_k p_k^a with p_i = 1 / rank(i)            (paper Eq. 6, rank-based;
            rank 1 = highest P2Value; tied entries share their average rank, so equal P2Values are drawn
            equally often whatever their insertion order)
``uniform``, ``pass_rate``, ``possibility``: the ablation baselines (power form on the named score).
``a`` is ``sampling_alpha``: 0 gives uniform sampling, larger values concentrate on the best experiences.
The power is taken in log space relative to the largest priority, so a large ``a`` cannot underflow to 0/0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

DrawStrategy = Literal["power", "rank", "uniform", "pass_rate", "possibility"]
DRAW_STRATEGIES: tuple[str, ...] = ("power", "rank", "uniform", "pass_rate", "possibility")


def check_strategy(strategy: str, field: str = "replay strategy") -> None:
    """Fail with ``field`` (the setting's name in the user's config) when ``strategy`` is unknown."""
    if strategy not in DRAW_STRATEGIES:
        raise ValueError(f"{field} {strategy!r} is unknown; use one of {', '.join(DRAW_STRATEGIES)}")


def average_ranks(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = the highest score; tied scores all get the mean of the ranks they span (four-way tie for
    first: 2.5 each). Ties are common (α = 0, an API without log-probs, raw possibilities), and breaking
    them by position would favour whichever entry happened to be stored first."""
    values, inverse, counts = np.unique(-np.asarray(scores, dtype=np.float64), return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last member of each group of equal values (ascending -score)
    return ((last - counts + 1 + last) / 2.0)[inverse]


def rank_priorities(scores: np.ndarray) -> np.ndarray:
    """p_i = 1 / rank_i with average ranks for ties (see :func:`average_ranks`)."""
    return 1.0 / average_ranks(scores)


def power_weights(priorities: np.ndarray, alpha: float) -> np.ndarray:
    """p^a / Σ p^a computed as exp(a·(log p − log max p)), normalised: no underflow for large ``a``.

    ``alpha = 0`` is uniform (0^0 = 1, as Eq. 6 reads); a priority of exactly 0 gets probability 0 for
    ``alpha > 0``; if every priority is 0 the draw is uniform (no entry is preferred over another).
    """
    p = np.asarray(priorities, dtype=np.float64)
    if alpha == 0 or not np.any(p > 0):
        return np.full(len(p), 1.0 / len(p))
    with np.errstate(divide="ignore"):
        logw = alpha * (np.log(p) - np.log(p.max()))  # log 0 = -inf -> weight 0
    weights = np.exp(logw)
    return weights / weights.sum()


def sampling_probabilities(
    p2values: Sequence[float],
    pass_rates: Sequence[float],
    possibilities: Sequence[float | None],
    strategy: DrawStrategy = "power",
    alpha: float = 1.0,
    epsilon: float = 1e-6,
) -> np.ndarray:
    """The probability of drawing each experience; sums to 1.

    ``epsilon`` is added to power-form priorities so an experience with score 0 (a failed program with an
    unknown possibility) stays reachable, as in prioritized experience replay (Schaul et al. 2016).
    Unknown possibilities count as 0 for the ``possibility`` strategy.
    """
    check_strategy(strategy)
    if alpha < 0:
        raise ValueError(f"sampling_alpha (data.replay.sampling_alpha) must be >= 0, got {alpha}")
    n = len(p2values)
    if n == 0:
        raise ValueError("the replay buffer is empty: nothing to sample (did the refresh produce candidates?)")
    if strategy == "uniform":
        return np.full(n, 1.0 / n)
    if strategy == "rank":
        priorities = rank_priorities(np.asarray(p2values, dtype=np.float64))
    else:
        source = {"power": p2values, "pass_rate": pass_rates}.get(strategy)
        if source is None:  # possibility
            source = [0.0 if p is None else p for p in possibilities]
        priorities = np.asarray(source, dtype=np.float64) + epsilon
    return power_weights(priorities, alpha)
