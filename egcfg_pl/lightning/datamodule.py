"""LightningDataModule: prioritized replay batches for training, held-out problems for evaluation."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, IterableDataset

from egcfg_pl.lightning.collate import ReplayCollator
from egcfg_pl.problems import ProblemSet, check_overlap
from egcfg_pl.problems.problem import Problem
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.replay.buffer import ReplayBuffer, ReplaySettings
from egcfg_pl.replay.experience import Experience

log = logging.getLogger(__name__)


class RecordBatch:
    """A batch of frozen records (problems, experiences) that Lightning must pass through untouched.

    Not a list or dataclass on purpose: Lightning's device transfer and precision plugins recurse into
    those and cannot rebuild frozen dataclasses.
    """

    def __init__(self, items: Sequence[Any]) -> None:
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)


def keep_as_is(batch: list[Experience]) -> RecordBatch:
    return RecordBatch(batch)


class ReplayStream(IterableDataset):
    """Yields ``steps`` prioritized batches per epoch, drawn from the live buffer when iterated.

    Every rank holds an identical buffer and RNG state; each step draws ``batch_size × world_size``
    experiences and this rank keeps its own slice, so ranks see different data and stay in lock-step.
    The draw happens lazily, after the refresh callback has filled the buffer for the epoch. When no entry can
    be trained on (every program truncated under ``data.replay.truncated: skip``, or every prompt too long), the
    epoch has no training steps and a warning says why; the next refresh may bring trainable programs.
    """

    def __init__(self, buffer: ReplayBuffer, steps: int, batch_size: int, rank: int = 0, world_size: int = 1):
        self.buffer, self.steps, self.batch_size = buffer, steps, batch_size
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[Experience]]:
        if len(self.buffer) and not self.buffer.drawable():  # identical buffers: every rank skips alike
            stats = self.buffer.stats()
            log.warning(
                "no training steps this epoch: none of the %d replay experiences can be trained on (%d truncated by "
                "the token budget, skipped under data.replay.truncated: skip; %d with prompts longer than "
                "data.max_length)", len(self.buffer), stats["buffer/skipped_truncated"],
                stats["buffer/skipped_long_prompt"],
            )
            return
        for _ in range(self.steps):
            drawn = self.buffer.sample(self.batch_size * self.world_size)
            yield drawn[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]


class BTPDataModule(L.LightningDataModule):
    def __init__(
        self,
        held_out: ProblemSet,
        train: ProblemSet | None = None,
        replay: ReplaySettings | None = None,
        batch_size: int = 4,
        samples_per_epoch: int = 64,
        eval_batch_size: int = 8,
        max_length: int = 1024,
        allow_overlap: bool = False,
        drop_overlapping_train: bool = False,
    ) -> None:
        """
        Args:
            held_out: problems for validation / test (pass@k); never trained on.
            train: problems the refresh callback samples and the buffer holds (omit for evaluation only).
            replay: P2Value, draw strategy and buffer settings.
            batch_size: experiences per optimizer micro-batch on each device.
            samples_per_epoch: experiences drawn per epoch over all devices (sets the steps per epoch).
            eval_batch_size: held-out problems generated together.
            max_length: token limit of prompt + program in training. Prompts are never cut: an experience whose
                prompt leaves no room for the program is not drawn (counted as ``buffer/skipped_long_prompt``);
                a program longer than the room left loses its tail (and EOS).
            allow_overlap: train even when train and held-out problems overlap (same id or same text).
            drop_overlapping_train: remove the overlapping problems from the training set instead (MBPP repeats
                3 statements between its train and test splits).
        """
        super().__init__()
        for name, value in (("batch_size", batch_size), ("samples_per_epoch", samples_per_epoch)):
            if value < 1:
                raise ValueError(f"data.{name} must be >= 1, got {value}")
        self.save_hyperparameters()
        self.held_out_set, self.train_set = held_out, train
        self.buffer = ReplayBuffer(replay or ReplaySettings())
        self.train_problems: list[Problem] = []
        self.held_out_problems: list[Problem] = []
        self._connected: tuple[Any, PromptTemplate, str] | None = None  # tokenizer, template, mode (``connect``)

    def connect(self, tokenizer: Any, template: PromptTemplate, mode: str) -> None:
        """What training batches need from the model, handed over once before the first epoch (litgpt's
        ``LitDataModule.connect``; ``BTPModule.configure_model`` calls it): the tokenizer and prompt template that
        tokenise prompt + program exactly as sampling did, and the mode (``btp_only`` trains nothing, so its
        experiences pass through untokenised)."""
        self._connected = (tokenizer, template, mode)

    def setup(self, stage: str) -> None:
        if not self.held_out_problems:
            self.held_out_problems = self.held_out_set.load()
        if stage == "fit" and not self.train_problems:
            if self.train_set is None:
                raise ValueError("data.train is required for fit: name the training problems (a ProblemSet)")
            self.train_problems = self.train_set.load()
            allow = self.hparams.allow_overlap or self.hparams.drop_overlapping_train
            pairs = check_overlap(self.train_problems, self.held_out_problems, allow=allow)
            if pairs and self.hparams.drop_overlapping_train:
                dropped = {train_id for train_id, _ in pairs}
                self.train_problems = [p for p in self.train_problems if p.id not in dropped]
                log.warning("dropped %d training problems that overlap held-out ones: %s", len(dropped), sorted(dropped))

    def problems_by_id(self) -> dict[str, Problem]:
        return {p.id: p for p in [*self.train_problems, *self.held_out_problems]}

    def train_dataloader(self) -> DataLoader:
        if self._connected is None:
            raise RuntimeError("BTPDataModule.connect(tokenizer, template, mode) must run before training "
                               "(BTPModule.configure_model calls it)")
        tokenizer, template, mode = self._connected
        trainer = self.trainer
        world = trainer.world_size if trainer else 1
        steps = math.ceil(self.hparams.samples_per_epoch / (self.hparams.batch_size * world))
        stream = ReplayStream(self.buffer, steps, self.hparams.batch_size, trainer.global_rank, world)
        # its own generator: each epoch's iterator would otherwise draw a seed from the global torch RNG, which
        # a resumed fit (its iterator made before the RNG is restored) would not repeat (rng_state.py)
        own = torch.Generator()
        if mode == "btp_only":  # nothing is trained: the experiences pass through untokenised
            return DataLoader(stream, batch_size=None, collate_fn=keep_as_is, generator=own)
        collate = ReplayCollator(tokenizer, template, self.problems_by_id(), self.hparams.max_length)
        self.buffer.prompt_fits = collate.fits  # draws skip experiences whose prompt alone fills max_length
        return DataLoader(stream, batch_size=None, collate_fn=collate, generator=own)

    def _problem_loader(self) -> DataLoader:
        # its own generator too: a validation between epochs must not move the global RNG that training draws from
        return DataLoader(self.held_out_problems, batch_size=self.hparams.eval_batch_size, collate_fn=RecordBatch,
                          generator=torch.Generator())

    def val_dataloader(self) -> DataLoader:
        return self._problem_loader()

    def test_dataloader(self) -> DataLoader:
        return self._problem_loader()

    def state_dict(self) -> dict[str, Any]:
        """The replay buffer travels inside the Lightning checkpoint (contents and draw RNG)."""
        return {"buffer": self.buffer.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
