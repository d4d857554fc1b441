"""The refresh callback: each epoch (one BTP iteration) sample → sandbox → push into the replay buffer."""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from lightning.pytorch.utilities.exceptions import SIGTERMException

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.lightning.gather import gather_objects
from egcfg_pl.lightning.interrupt import ResumePoint
from egcfg_pl.lightning.refresh_core import add_to_metric, refresh_experiences
from egcfg_pl.lightning.refresh_spill import SPILL_DIR, RefreshSpill, fingerprint, problem_digest, weights_digest
from egcfg_pl.lightning.run_folder import EXPERIENCES, checkpoint_dir, run_root
from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.models import ModelSpec
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.experience import Experience, experience_to_dict
from egcfg_pl.sampling.api import ApiSettings
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.factory import build_sampler
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import Executor, SandboxConfig

log = logging.getLogger(__name__)


def all_gather_experiences(local: list[Experience]) -> list[Experience]:
    """Every rank gets every rank's experiences, in rank order, so all buffers stay identical."""
    return [exp for part in gather_objects(local) for exp in part or []]


class ReplayRefresh(L.Callback):
    def __init__(
        self,
        generation: GenerationSettings | None = None,
        sandbox: SandboxConfig | None = None,
        source_model: ModelSpec | None = None,
        source_api: ApiSettings | None = None,
        problems_per_refresh: int | None = None,
        seed: int = 0,
        save_experiences: bool = True,
        chunk_problems: int = 32,
        resume_partial: bool = True,
    ) -> None:
        """
        Args:
            generation: how candidates are sampled (beam 5 by default).
            sandbox: executor settings for testing candidates.
            source_model: a separate local model that writes the candidates (big-to-small); by default the
                target model itself samples (self-improvement), with its current LoRA weights.
            source_api: an OpenAI-compatible API source (hybrid mode: API samples, local LoRA target).
            problems_per_refresh: sample this many training problems per epoch (a seeded rotation), or all.
            seed: seed of the problem rotation.
            save_experiences: write each refresh's experiences to ``<default_root_dir>/experiences.jsonl`` (a
                resumed epoch replaces the lines its interrupted attempt wrote: each refresh appears once).
            chunk_problems: problems sampled and tested together before their results are written to the spill
                file (``refresh_spill.py``); smaller = less lost on a kill, larger = better length bucketing.
            resume_partial: spill each tested problem to ``<default_root_dir>/refresh_spill/`` and, when a resumed
                fit (``--ckpt_path``) runs the same refresh again (same epoch, problems and their tests, settings and
                weights), skip what it holds. A fresh fit removes a spill it finds.
        """
        super().__init__()
        if source_model is not None and source_api is not None:
            raise ValueError("refresh: set source_model or source_api, not both")
        if chunk_problems < 1:
            raise ValueError(f"refresh: chunk_problems must be >= 1, got {chunk_problems}")
        self.generation = generation or GenerationSettings()
        self.sandbox = sandbox or SandboxConfig()
        self.source_model, self.source_api = source_model, source_api
        self.problems_per_refresh, self.seed = problems_per_refresh, seed
        self.save_experiences = save_experiences
        self.chunk_problems, self.resume_partial = chunk_problems, resume_partial
        self._sampler: Sampler | None = None
        self._executor: Executor | None = None
        self.last_stats: dict[str, float] = {}
        self._p2metric = P2ValueMetric()
        self._resume_point = ResumePoint()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit" and self._executor is None:
            self._executor = Executor(self.sandbox)

    # -- the run folder across kills and resumes -----------------------------------------------------
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """A fresh fit never reuses another run's spill; then the state a Ctrl-C would save (see interrupt.py)."""
        if trainer.ckpt_path is None:
            if trainer.is_global_zero:
                self._start_clean(trainer)
            trainer.strategy.barrier("refresh_spill_removed")
        self._resume_point.on_fit_started(trainer)

    @staticmethod
    def _start_clean(trainer: L.Trainer) -> None:
        root = run_root(trainer)
        spill = root / SPILL_DIR
        if spill.is_dir():
            log.warning("fresh fit (no --ckpt_path): removing the refresh spill of an earlier run in %s; "
                        "resume that run with --ckpt_path last to reuse it", spill)
            shutil.rmtree(spill, ignore_errors=True)
        earlier = [p.name for p in (root / EXPERIENCES, checkpoint_dir(trainer) / "last.ckpt") if p.exists()]
        if earlier:
            log.warning("fresh fit in %s, which holds an earlier run (%s): this run replaces its experiences, "
                        "adapter and last.ckpt and adds to its TensorBoard folder; continue it with --ckpt_path last "
                        "or start elsewhere with --trainer.default_root_dir", root, ", ".join(earlier))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._resume_point.on_epoch_end(trainer)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._resume_point.on_exception(trainer, exception)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """The fit finished: every refresh is in the buffer and the final state is saved; the spill goes."""
        trainer.strategy.barrier("refresh_spill_done")
        if trainer.is_global_zero:
            shutil.rmtree(run_root(trainer) / SPILL_DIR, ignore_errors=True)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self._executor is not None:
            self._executor.close()
            self._executor = None

    def sampler(self, pl_module: Any) -> Sampler:
        """The source of candidates: the target itself, a separate local model, or an API."""
        if self.source_api is None and self.source_model is None:
            return pl_module.sampler(self.generation)  # rebuilt each time: it wraps the live weights
        if self._sampler is None:  # a source model is loaded once, on the module's device
            self._sampler = build_sampler(self.generation, pl_module.template, api=self.source_api,
                                          source=self.source_model, device=pl_module.device)
        return self._sampler

    def select(self, problems: Sequence[Problem], epoch: int) -> list[Problem]:
        if self.problems_per_refresh is None or self.problems_per_refresh >= len(problems):
            return list(problems)
        order = np.random.default_rng(self.seed + epoch).permutation(len(problems))
        return [problems[i] for i in sorted(order[: self.problems_per_refresh])]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        epoch = trainer.current_epoch
        chosen = self.select(dm.train_problems, epoch)
        shard = chosen[trainer.global_rank :: trainer.world_size]  # each rank samples a disjoint shard
        local = self.refresh(pl_module, shard, dm.buffer.settings, epoch)
        refresh_stats = self._distribution(local, pl_module.device)  # a collective call under DDP
        experiences = all_gather_experiences(local)
        added = dm.buffer.add(experiences)
        self.last_stats = {
            **dm.buffer.stats(),
            **refresh_stats,
            "refresh/candidates": float(len(experiences)),
            "refresh/new": float(added),
        }
        if self.save_experiences and trainer.is_global_zero:  # on disk before anything else can fail
            self._write(run_root(trainer) / EXPERIENCES, trainer.current_epoch, experiences)
        self._log(trainer, pl_module, experiences)

    def refresh(self, pl_module: Any, problems: Sequence[Problem], replay: Any, epoch: int) -> list[Experience]:
        """Sample and test one shard of problems (``refresh_experiences`` per chunk); returns the experiences (not
        yet in the buffer).

        Works in chunks of ``chunk_problems``; each tested problem is spilled to disk at once (see
        ``refresh_spill.py``), and problems already in the spill of an interrupted attempt are not redone.
        """
        if not problems:
            return []
        spill = self._spill(pl_module, problems, replay, epoch) if self.resume_partial else None
        done: dict[str, list[Experience]] = spill.load() if spill is not None else {}
        if spill is not None:
            spill.remove_older()
        todo = [p for p in problems if p.id not in done]
        assert self._executor is not None, "refresh runs inside fit (setup creates the executor)"
        sampler = self.sampler(pl_module) if todo else None  # a source model is loaded only when needed
        trainer = pl_module.trainer
        rank = trainer.global_rank
        for start in range(0, len(todo), self.chunk_problems):
            if trainer.world_size == 1 and getattr(trainer, "received_sigterm", False):
                raise SIGTERMException()  # Lightning checks only between training batches (and syncs the ranks)
            chunk = todo[start : start + self.chunk_problems]
            # one random stream per (iteration, rank, chunk): seed + iteration alone repeats across chunks and ranks
            tested = refresh_experiences(sampler, self._executor, chunk, replay, iteration=epoch,
                                         stream=(rank, start // self.chunk_problems))
            for problem in chunk:
                done[problem.id] = [e for e in tested if e.candidate.problem_id == problem.id]
                if spill is not None:
                    spill.append(problem.id, done[problem.id])
        return [e for p in problems for e in done[p.id]]

    def _spill(self, pl_module: Any, problems: Sequence[Problem], replay: Any, epoch: int) -> RefreshSpill:
        trainer = pl_module.trainer
        own_weights = self.source_model is None and self.source_api is None
        settings = (self.generation, self.source_model, self.source_api, getattr(pl_module, "spec", None),
                    getattr(pl_module, "template", None), self.sandbox, replay, str(trainer.precision))
        digest = weights_digest(getattr(pl_module, "model", None)) if own_weights else ""
        problems_key = [problem_digest(p) for p in problems]  # ids, statements, tests: an edited problem is redone
        fp = fingerprint(epoch, trainer.global_rank, trainer.world_size, problems_key, settings, digest)
        return RefreshSpill(run_root(trainer), epoch, trainer.global_rank, fp)

    def _distribution(self, local: list[Experience], device: torch.device) -> dict[str, float]:
        """Mean P2Value / possibility / pass rate of this refresh over all ranks (torchmetrics-synced)."""
        metric = add_to_metric(self._p2metric.to(device), local)
        values = {f"refresh/{k}": float(v) for k, v in metric.compute().items()}
        metric.reset()
        return values

    def _log(self, trainer: L.Trainer, pl_module: Any, experiences: list[Experience]) -> None:
        for key, value in self.last_stats.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, rank_zero_only=True, batch_size=1)
        writer = getattr(trainer.logger, "experiment", None)
        if trainer.is_global_zero and experiences and hasattr(writer, "add_histogram"):
            step = trainer.global_step  # the x-axis of every scalar too
            writer.add_histogram("refresh/p2value", torch.tensor([e.p2value for e in experiences]), step)
            writer.add_histogram("refresh/pass_rate", torch.tensor([e.pass_rate for e in experiences]), step)
            known = [e.possibility for e in experiences if e.possibility is not None]
            if known:
                writer.add_histogram("refresh/possibility", torch.tensor(known), step)
        log.info("refresh epoch %d: %s", trainer.current_epoch, self.last_stats)

    @staticmethod
    def _write(path: Path, epoch: int, experiences: list[Experience]) -> None:
        """Keep the lines of earlier epochs, drop any of this epoch or later (an interrupted attempt's, which
        a resume repeats), append this refresh's; written to a temporary file and moved into place."""
        kept: list[str] = []
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                for line in f:
                    try:
                        if int(json.loads(line)["epoch"]) < epoch:
                            kept.append(line if line.endswith("\n") else line + "\n")
                    except (ValueError, KeyError, TypeError):
                        continue  # a line torn by a kill
        rows = [json.dumps({"epoch": epoch, **experience_to_dict(exp)}) + "\n" for exp in experiences]
        atomic_write_text(path, "".join(kept + rows))
