"""Prioritized sampling distributions over replay experiences (BTP paper, Sec. 3.3).

``power``:  P(i) = p_i^a / Σ_k p_k^a with p_i = P2Value_i            (paper Eq. 6, "proportional")
``rank``:   P(i) = p_i^a / Σ_k p_k^a with p_i = 1 / rank(i)            (paper Eq. 6, rank-based;
            rank 1 = highest P2Value, ties share the better rank order by insertion)
``uniform``, ``pass_rate``, ``possibility``: the ablation baselines (power form on the named score).
``a`` is ``sampling_alpha``: 0 gives uniform sampling, larger values concentrate on the best experiences.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

Strategy = Literal["power", "rank", "uniform", "pass_rate", "possibility"]
STRATEGIES: tuple[str, ...] = ("power", "rank", "uniform", "pass_rate", "possibility")


def check_strategy(strategy: str, field: str = "replay strategy") -> None:
    """Fail with ``field`` (the setting's name in the user's config) when ``strategy`` is unknown."""
    if strategy not in STRATEGIES:
        raise ValueError(f"{field} {strategy!r} is unknown; use one of {', '.join(STRATEGIES)}")


def rank_priorities(scores: np.ndarray) -> np.ndarray:
    """p_i = 1 / rank_i where rank 1 is the highest score (a stable sort keeps insertion order on ties)."""
    order = np.argsort(-scores, kind="stable")
    ranks = np.empty(len(scores), dtype=np.float64)
    ranks[order] = np.arange(1, len(scores) + 1)
    return 1.0 / ranks


def sampling_probabilities(
    p2values: Sequence[float],
    pass_rates: Sequence[float],
    possibilities: Sequence[float | None],
    strategy: Strategy = "power",
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
    weights = priorities**alpha
    return weights / weights.sum()
