"""The refresh's core as a plain function: sample → sandbox → experiences, callable without a Trainer.

``ReplayRefresh`` (``refresh.py``) calls it once per chunk of its rank's shard; what surrounds it (which problems,
the shard, the spill across kills, the gather over ranks, the buffer and ``experiences.jsonl`` writes) is the
callback's, so a test or a notebook can run one refresh with any sampler and executor.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.buffer import ReplaySettings
from egcfg_pl.replay.experience import Experience
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox import Executor, Verdict


def refresh_experiences(
    sampler: Sampler,
    executor: Executor,
    problems: Sequence[Problem],
    settings: ReplaySettings,
    *,
    iteration: int = 0,
    stream: Sequence[int] = (),
) -> list[Experience]:
    """Sample candidates for ``problems``, test each against its problem's tests, score it; returns the
    experiences in the sampler's order (not yet in any buffer).

    ``iteration`` and ``stream`` name the sampler's random stream (the callback passes the epoch and
    ``(rank, chunk)``, so no two chunks or ranks repeat one)."""
    if not problems:
        return []
    by_id = {p.id: p for p in problems}
    candidates = sampler.sample(list(problems), iteration=iteration, stream=stream)
    verdicts = executor.run_many([(by_id[c.problem_id], c.program) for c in candidates])
    return score(candidates, verdicts, settings)


def score(candidates: Sequence[Candidate], verdicts: Sequence[Verdict], settings: ReplaySettings) -> list[Experience]:
    """Tested candidates → experiences with the replay's P2Value α and possibility form (a shared sample is
    re-scored this way by each variant that reuses it)."""
    return [Experience.build(c, v, settings.p2value_alpha, settings.possibility_form)
            for c, v in zip(candidates, verdicts, strict=True)]


def add_to_metric(metric: P2ValueMetric, experiences: Sequence[Experience]) -> P2ValueMetric:
    """Count experiences into a P2Value / possibility / pass-rate metric (an unknown possibility as NaN, which
    the metric leaves out); the refresh logs its means, the experiment record its histogram."""
    if experiences:
        as_tensor = lambda values: torch.tensor(values, dtype=torch.float64)  # noqa: E731
        possibility = [math.nan if e.possibility is None else e.possibility for e in experiences]
        metric.update(as_tensor([e.p2value for e in experiences]), as_tensor(possibility),
                      as_tensor([e.pass_rate for e in experiences]))
    return metric
