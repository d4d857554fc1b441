"""Held-out evaluation inside Lightning: generate with the current weights, sandbox, score, report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from egcfg_pl.metrics.report import EvalReport, ProblemReport
from egcfg_pl.metrics.scorer import CandidateScorer
from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sandbox import Executor, SandboxConfig


def gather_reports(local: list[ProblemReport]) -> list[ProblemReport]:
    """All ranks' per-problem records (DistributedSampler may repeat a few problems to even out shards;
    the first record of each problem id is kept)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return local
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    seen: dict[str, ProblemReport] = {}
    for part in parts:
        for report in part or []:
            seen.setdefault(report.problem_id, report)
    return list(seen.values())


class HeldOutEvaluator:
    """One per stage (val / test): owns an executor and a scorer; fed one batch of problems at a time."""

    def __init__(self, sandbox: SandboxConfig, ks: Sequence[int], stage: str) -> None:
        self.stage = stage
        self.executor = Executor(sandbox)
        self.scorer = CandidateScorer(self.executor, ks)

    def step(self, sampler: Sampler, problems: Sequence[Problem]) -> None:
        start = time.perf_counter()
        candidates = sampler.sample(problems)
        self.scorer.score(problems, candidates, gen_seconds=time.perf_counter() - start)

    def compute(self) -> dict[str, float]:
        return self.scorer.compute()

    def write_report(self, path: Path, config: dict[str, Any]) -> EvalReport:
        """Collective under DDP (every rank calls it); rank 0 writes the file."""
        problems = gather_reports(self.scorer.problems)
        report = self.scorer.report(config, problems)
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or torch.distributed.get_rank() == 0:
            report.to_json(path)
        return report

    def reset(self) -> None:
        self.scorer.reset()

    def close(self) -> None:
        self.executor.close()
