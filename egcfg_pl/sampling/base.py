"""The sampler interface: problems in, candidate programs (with log-probs) out.

Local beam search (``beam.py``) and OpenAI-compatible APIs (``api.py``) both implement it, so the
refresh callback and the evaluator do not care where candidates come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.candidate import Candidate


@runtime_checkable
class Sampler(Protocol):
    name: str  # recorded on every candidate as its ``source``

    def sample(self, problems: Sequence[Problem], *, iteration: int = 0) -> list[Candidate]:
        """Candidates for every problem, grouped by problem in input order, best first within a problem."""
        ...
