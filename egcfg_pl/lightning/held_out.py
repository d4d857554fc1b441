"""Held-out evaluation inside Lightning: generate with the current weights, sandbox, score, report."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.gather import distributed, gather_objects
from egcfg_pl.lightning.run_folder import latest_eval_json
from egcfg_pl.metrics.report import EvalReport, ProblemReport, ProgramRunner
from egcfg_pl.metrics.scorer import CandidateScorer
from egcfg_pl.problems import ProblemSet
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.buffer import ReplaySettings
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sandbox import Executor, SandboxConfig


def gather_reports(local: list[ProblemReport]) -> list[ProblemReport]:
    """All ranks' per-problem records (DistributedSampler may repeat a few problems to even out shards;
    the first record of each problem id is kept)."""
    seen: dict[str, ProblemReport] = {}
    for part in gather_objects(local):
        for report in part or []:
            seen.setdefault(report.problem_id, report)
    return list(seen.values())


def claimed_problem_ids(parts: Sequence[Sequence[str]], rank: int) -> set[str]:
    """The problem ids that ``rank`` counts, given every rank's scored ids (in rank order): each id belongs to
    the first rank that scored it — the same record ``gather_reports`` keeps."""
    owner: dict[str, int] = {}
    for part_rank, ids in enumerate(parts):
        for pid in ids:
            owner.setdefault(pid, part_rank)
    return {pid for pid, part_rank in owner.items() if part_rank == rank}


def deduplicate_across_ranks(scorer: CandidateScorer) -> None:
    """Collective under DDP: recount ``scorer`` over the problems this rank owns, so the synced metric sums
    count each held-out problem once (padding repeats dropped), matching the de-duplicated JSON report."""
    parts = gather_objects([r.problem_id for r in scorer.problems])  # a problem fed twice counts once
    rank = torch.distributed.get_rank() if distributed() else 0
    scorer.keep_only(claimed_problem_ids([p or [] for p in parts], rank))


class HeldOutEvaluator:
    """One per stage (val / test): owns an executor and a scorer; fed one batch of problems at a time.

    P2Value and possibility are scored like the replay buffer's (``data.replay.p2value_alpha`` and
    ``data.replay.possibility_form``), so held-out P2Value statistics follow the configured variant.
    """

    def __init__(
        self,
        sandbox: SandboxConfig,
        ks: Sequence[int],
        stage: str,
        replay: ReplaySettings | None = None,
        executor: ProgramRunner | None = None,
    ) -> None:
        self.stage = stage
        self.replay = replay or ReplaySettings()
        self.executor = executor if executor is not None else Executor(sandbox)
        self.scorer = CandidateScorer(
            self.executor, ks, p2value_alpha=self.replay.p2value_alpha, possibility_form=self.replay.possibility_form
        )
        self._deduplicated = False

    def step(self, sampler: Sampler, problems: Sequence[Problem]) -> None:
        start = time.perf_counter()
        candidates = sampler.sample(problems)
        self.scorer.score(problems, candidates, gen_seconds=time.perf_counter() - start)
        self._deduplicated = False

    def _deduplicate(self) -> None:
        """Collective under DDP, once per round of steps: see ``deduplicate_across_ranks``."""
        if not self._deduplicated:
            deduplicate_across_ranks(self.scorer)
            self._deduplicated = True

    def compute(self) -> dict[str, float]:
        """Collective under DDP (every rank calls it): metrics over the de-duplicated held-out problems."""
        self._deduplicate()
        return self.scorer.compute()

    def write_report(self, path: Path, config: dict[str, Any]) -> EvalReport:
        """Collective under DDP (every rank calls it); rank 0 writes the file."""
        self._deduplicate()  # so the metrics and the per-problem records agree
        problems = gather_reports(self.scorer.problems)
        report = self.scorer.report(config, problems)
        if not distributed() or torch.distributed.get_rank() == 0:
            report.to_json(path)
        return report

    def reset(self) -> None:
        self.scorer.reset()
        self._deduplicated = False

    def close(self) -> None:
        close = getattr(self.executor, "close", None)
        if close is not None:
            close()


def held_out_test(
    module: L.LightningModule, problems: ProblemSet, folder: Path, eval_batch_size: int, **trainer_kwargs: Any
) -> Path:
    """``trainer.test`` of ``module``'s current weights on ``problems`` with a Trainer of its own whose run folder is
    ``folder``; returns the evaluation JSON it wrote there. The demo's baselines and every campaign variant use it."""
    data = BTPDataModule(held_out=problems, eval_batch_size=eval_batch_size)
    trainer = L.Trainer(devices=1, default_root_dir=str(folder), logger=False, enable_checkpointing=False,
                        enable_model_summary=False, **trainer_kwargs)
    trainer.test(module, data, verbose=False)
    return latest_eval_json(folder, "test")
