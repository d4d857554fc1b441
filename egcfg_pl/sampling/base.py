"""The sampler interface: problems in, candidate programs (with log-probs) out.

Local beam search (``beam.py``) and OpenAI-compatible APIs (``api.py``) both implement it, so the
refresh callback and the evaluator do not care where candidates come from.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.candidate import Candidate


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed for one random stream, e.g. ``(seed, iteration, rank, chunk)``: distinct parts give
    independent streams (numpy's SeedSequence hashing), where ``seed + iteration`` would repeat a stream in
    every chunk and on every rank."""
    # the count of parts goes in too: SeedSequence pads its entropy with zeros, so (s, 1) would equal (s, 1, 0)
    words = np.random.SeedSequence([seed, len(parts), *parts]).generate_state(2, dtype=np.uint32)
    return int((int(words[0]) << 31) ^ int(words[1]))


@runtime_checkable
class Sampler(Protocol):
    name: str  # recorded on every candidate as its ``source``

    def sample(
        self, problems: Sequence[Problem], *, iteration: int = 0, stream: Sequence[int] = ()
    ) -> list[Candidate]:
        """Candidates for every problem, grouped by problem in input order, best first within a problem.

        ``stream`` names the random stream beside the iteration (the refresh passes ``(rank, chunk)``): a
        seeded sampler draws from ``derive_seed(seed, iteration, *stream)``."""
        ...
