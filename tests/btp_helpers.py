"""Small builders shared by the Lightning tests: a tiny-model BTP run on a few MBPP problems."""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.models import LoraSettings, ModelSpec
from egcfg_pl.problems import ProblemSet
from egcfg_pl.replay import ReplaySettings
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig

# conftest.py exports EGCFG_DATA_DIR (given, or ../shared/data); without it the tests using this are skipped
SHARED_MBPP = Path(os.environ.get("EGCFG_DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "data") / "mbpp.jsonl"


def tiny_module(model_dir: Path, mode: str = "finetune", **kwargs) -> BTPModule:
    return BTPModule(
        model=ModelSpec(name=str(model_dir), dtype="float32", device="cpu"),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0),
        mode=mode,
        evaluation=GenerationSettings(strategy="greedy", num_beams=1, num_return_sequences=1, max_new_tokens=12, progress=False),
        sandbox=SandboxConfig(timeout=2.0, workers=2),
        learning_rate=1e-2,
        **kwargs,
    )


def tiny_datamodule(train: int = 4, held_out: int = 2, seed: int = 0) -> BTPDataModule:
    return BTPDataModule(
        held_out=ProblemSet(dataset="mbpp", split="test", path=str(SHARED_MBPP), limit=held_out),
        train=ProblemSet(dataset="mbpp", split="train", path=str(SHARED_MBPP), limit=train),
        replay=ReplaySettings(seed=seed, truncated="no_eos"),  # a random tiny model never ends within 12 tokens
        batch_size=2,
        samples_per_epoch=4,
        max_length=256,
    )


def refresh_callback(**kwargs) -> ReplayRefresh:
    generation = GenerationSettings(strategy="beam", num_beams=2, num_return_sequences=2, max_new_tokens=12, progress=False)
    return ReplayRefresh(generation=generation, sandbox=SandboxConfig(timeout=2.0, workers=2), **kwargs)


def tiny_trainer(root: Path, epochs: int, callbacks: list, **kwargs) -> L.Trainer:
    return L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=epochs,
        default_root_dir=str(root),
        logger=L.pytorch.loggers.TensorBoardLogger(str(root), name="tb"),
        callbacks=callbacks,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=kwargs.pop("limit_val_batches", 0),
        **kwargs,
    )
