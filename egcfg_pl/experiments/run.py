"""One variant of a campaign, the single code path of every step: build the run, fit, evaluate held out.

``run_variant(settings, folder, train=...)`` returns a JSON-able record: the held-out metrics and the
evaluation JSON (per-problem results, from which the steps compute intervals), the replay buffer's
statistics and P2Value histogram, the adapter path and the timings. Untrained models (the RSR baseline,
a big-to-small source) take the same path without the fit.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L

from egcfg_pl.experiments.spec import RunSettings
from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.lightning.refresh_core import add_to_metric, score
from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.experience import Experience

log = logging.getLogger(__name__)


class EmptyReplayError(RuntimeError):
    """The first refresh stored nothing (e.g. sample-and-filter where no sampled program passed)."""


class StopOnEmptyBuffer(L.Callback):
    """Ends the fit before any optimizer step when the refresh left nothing drawable (listed after the
    refresh callback, so it sees the filled buffer). Lightning tears down and re-raises the error."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        buffer = trainer.datamodule.buffer
        if buffer.drawable() == 0:  # empty, or every kept program is excluded (e.g. all truncated under skip)
            raise EmptyReplayError(
                f"iteration {trainer.current_epoch}: no sampled program can be trained on ({len(buffer)} kept, "
                f"replay.min_pass_rate={buffer.settings.min_pass_rate}, replay.truncated={buffer.settings.truncated})"
                "; nothing to fine-tune on"
            )


class SharedSampleRefresh(ReplayRefresh):
    """``ReplayRefresh`` that samples and tests a shard once per campaign while the sampling weights are
    provably those every variant starts from: a frozen source model (any iteration), or the target before
    its first optimizer step (a fresh LoRA adapter has B = 0, so it adds exactly nothing).

    The candidates and verdicts are shared; each variant rebuilds its experiences with its own P2Value α
    and possibility form, so the variants differ only in what they keep and replay.
    """

    def __init__(self, cache: dict[str, list[tuple[Any, Any]]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cache = cache
        self.reused = 0  # refreshes served from the cache in this fit

    def _key(self, pl_module: Any, problems: list[Problem], epoch: int) -> str | None:
        if self.source_api is not None or (self.source_model is None and pl_module.global_step > 0):
            return None
        model = self.source_model or pl_module.spec
        precision = pl_module.trainer.precision
        parts = (model, self.generation, pl_module.template, self.sandbox, precision, epoch, [p.id for p in problems])
        return repr(parts)

    def refresh(self, pl_module: Any, problems: Any, replay: Any, epoch: int) -> list[Experience]:
        key = self._key(pl_module, list(problems), epoch)
        if key is None:
            return super().refresh(pl_module, problems, replay, epoch)
        if key in self.cache:
            self.reused += 1
        else:
            self.cache[key] = [(e.candidate, e.verdict) for e in super().refresh(pl_module, problems, replay, epoch)]
        candidates, verdicts = zip(*self.cache[key]) if self.cache[key] else ((), ())
        return score(candidates, verdicts, replay)


def build_module(s: RunSettings, train: bool) -> BTPModule:
    return BTPModule(
        model=s.model,
        lora=s.lora if train else None,
        template=s.template,
        evaluation=s.evaluation,
        sandbox=s.sandbox,
        pass_k=list(s.pass_k),
        learning_rate=s.learning_rate,
    )


def build_data(s: RunSettings) -> BTPDataModule:
    """The datamodule; the replay draws are seeded by ``run.seed`` unless ``run.replay.seed`` is set."""
    replay = s.replay if s.replay.seed is not None else dataclasses.replace(s.replay, seed=s.seed)
    return BTPDataModule(
        held_out=s.held_out,
        train=s.train,
        replay=replay,
        batch_size=s.batch_size,
        samples_per_epoch=s.samples_per_epoch,
        eval_batch_size=s.eval_batch_size,
        max_length=s.max_length,
        drop_overlapping_train=s.drop_overlapping_train,
    )


def build_trainer(s: RunSettings, folder: Path, **kwargs: Any) -> L.Trainer:
    return L.Trainer(
        accelerator=s.accelerator,
        devices=1,
        precision=s.precision,
        default_root_dir=str(folder),
        enable_progress_bar=s.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        **kwargs,
    )


def evaluate(module: BTPModule, data: BTPDataModule, s: RunSettings, folder: Path) -> dict[str, Any]:
    """``trainer.test`` on the held-out problems; the evaluation JSON goes to ``folder/held_out/``."""
    module.hparams.results_dir = str(folder / "held_out")
    build_trainer(s, folder, logger=False, enable_checkpointing=False).test(module, data, verbose=False)
    return dict(module.last_eval)


def fit(
    module: BTPModule, data: BTPDataModule, s: RunSettings, folder: Path, cache: dict | None, stop_if_empty: bool
) -> dict[str, Any]:
    """BTP iterations (refresh → replay → LoRA steps); the adapter goes to ``folder/adapter``."""
    kwargs = {"generation": s.sampling, "sandbox": s.sandbox, "source_model": s.source_model,
              "problems_per_refresh": s.problems_per_refresh, "seed": s.seed}
    refresh = SharedSampleRefresh(cache, **kwargs) if cache is not None else ReplayRefresh(**kwargs)
    callbacks: list[L.Callback] = [refresh] + ([StopOnEmptyBuffer()] if stop_if_empty else [])
    logger = L.pytorch.loggers.TensorBoardLogger(str(folder), name="", version="")  # log_dir = folder
    module.hparams.results_dir = str(folder)
    trainer = build_trainer(s, folder, max_epochs=s.max_epochs, logger=logger, callbacks=callbacks,
                            enable_checkpointing=False, limit_val_batches=0, log_every_n_steps=1)
    note = None
    try:
        trainer.fit(module, data)
    except EmptyReplayError as error:
        note = str(error)
    return {
        "optimizer_steps": int(trainer.global_step),
        "note": note,
        "refresh": {k: v for k, v in refresh.last_stats.items() if k.startswith("refresh/")},
        "buffer": buffer_record(data),
        "samples_shared": bool(getattr(refresh, "reused", 0)),
        "experiences": str(folder / "experiences.jsonl"),
        "adapter": str(module.adapter_dir()) if trainer.global_step else None,
    }


def buffer_record(data: BTPDataModule) -> dict[str, Any]:
    """Buffer statistics, the P2Value histogram on [0, 1] (the bins of every evaluation report: ``P2ValueMetric``),
    and which models wrote the stored candidates."""
    items = data.buffer.experiences
    histogram = add_to_metric(P2ValueMetric(), items)
    return {
        **{k.removeprefix("buffer/"): v for k, v in data.buffer.stats().items()},
        "p2value_hist": {"edges": histogram.bin_edges.tolist(), "counts": histogram.histograms()["p2value"]},
        "sources": sorted({e.candidate.source for e in items}),
        "train_problems": len(data.train_problems),
    }


def run_variant(
    s: RunSettings,
    folder: Path,
    train: bool = True,
    cache: dict | None = None,
    stop_if_empty: bool = False,
) -> dict[str, Any]:
    """Build the run from ``s`` (seeded), fit it when ``train``, evaluate held out; returns the record."""
    L.seed_everything(s.seed, workers=True, verbose=False)
    folder.mkdir(parents=True, exist_ok=True)
    module, data = build_module(s, train), build_data(s)
    record: dict[str, Any] = {"trained": False, "optimizer_steps": 0, "seconds": {}}
    start = time.perf_counter()
    if train:
        record.update(fit(module, data, s, folder, cache, stop_if_empty))
        record["trained"] = record["optimizer_steps"] > 0
        record["seconds"]["fit"] = time.perf_counter() - start
    if train and not record["trained"]:
        record["held_out"] = None  # weights unchanged: the caller uses the untrained evaluation
    else:
        start = time.perf_counter()
        metrics = evaluate(module, data, s, folder)
        record["seconds"]["evaluate"] = time.perf_counter() - start
        record["held_out"] = {"eval_json": metrics.pop("path"), "metrics": metrics}
    record["model"] = asdict(s.model)
    del module, data
    gc.collect()
    return record
