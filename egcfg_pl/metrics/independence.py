"""pass@k > 1 needs independent samples: refuse it for candidates that are not.

The unbiased pass@k estimator (Chen et al. 2021) assumes the n answers of a problem are i.i.d. draws
from the model. Beam search returns the k best distinct sequences of one deterministic search: they are
neither independent nor distributed as the model's samples, so "pass@k" from beams is best-of-beams, a
different (and not comparable) number. Greedy gives one answer. Only ``strategy: sample`` qualifies.
"""

from __future__ import annotations

from collections.abc import Iterable

IID_STRATEGIES = ("sample",)


def refuse_dependent_pass_k(ks: Iterable[int], strategy: str, pass_k_field: str, strategy_field: str) -> None:
    """Raise naming both settings when some k > 1 would be estimated from non-i.i.d. (beam / greedy) answers."""
    above_one = [k for k in ks if k > 1]
    if above_one and strategy not in IID_STRATEGIES:
        raise ValueError(
            f"{pass_k_field} {above_one}: pass@k with k > 1 needs independent samples, but {strategy_field} is "
            f"{strategy!r}; beam candidates are the best sequences of one search, not i.i.d. draws, so the "
            f"unbiased pass@k estimator does not apply to them. Set {strategy_field}: sample (with a temperature) "
            f"for pass@k, or keep {pass_k_field}: [1]"
        )
