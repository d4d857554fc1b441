"""Ctrl-C / SIGTERM write a checkpoint the fit resumes from exactly, and say how to resume.

A checkpoint taken in the middle of an epoch cannot be resumed exactly (the replay stream has drawn ahead,
Lightning restarts a non-resumable loader), so the resumable states are the epoch boundaries: the start of
the fit and the end of each training epoch. ``ResumePoint`` keeps the latest one in memory (LoRA weights,
optimizer, replay buffer, RNG states and loop counters: small next to the model) and on an interrupt writes
it as ``last.ckpt``. The resumed fit repeats the interrupted epoch: its refresh comes back from the spill
(``refresh_spill.py``: same weights, so the same fingerprint) and its training steps run again with the same
batches and random states.

At the start of a fresh fit the state is also written to disk at once when a ModelCheckpoint keeps
``last.ckpt``, so a SIGKILL during the first (long) refresh still resumes with ``--ckpt_path last``.
"""

from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities.exceptions import SIGTERMException

from egcfg_pl.lightning.run_folder import checkpoint_dir, resume_command

log = logging.getLogger(__name__)


def keeps_last(trainer: Any) -> bool:
    """A ModelCheckpoint saves ``last.ckpt``, so ``--ckpt_path last`` finds what is written there."""
    return any(isinstance(cb, ModelCheckpoint) and cb.save_last for cb in trainer.checkpoint_callbacks)


def adopt_last(trainer: Any) -> None:
    """Make ``<dirpath>/last.ckpt`` ModelCheckpoint's own "last" file, so its next save overwrites it instead of
    writing ``last-v1.ckpt`` beside it (it only overwrites a file it wrote, and this one was written here)."""
    name = f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
    for callback in trainer.checkpoint_callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
            path = Path(callback.dirpath) / name
            if not callback.last_model_path and path.is_file():
                callback.last_model_path = str(path)


class ResumePoint:
    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.label, self.next_epoch = "", 0

    def take(self, trainer: Any, label: str, next_epoch: int) -> None:
        """Snapshot the trainer's state now (every rank: the module gathers the RNG states collectively)."""
        checkpoint = trainer._checkpoint_connector.dump_checkpoint(weights_only=False)
        self.state = copy.deepcopy(checkpoint)  # the tensors are the live weights
        self.label, self.next_epoch = label, next_epoch

    def write(self, trainer: Any) -> Path:
        path = checkpoint_dir(trainer) / f"{ModelCheckpoint.CHECKPOINT_NAME_LAST}{ModelCheckpoint.FILE_EXTENSION}"
        assert self.state is not None
        trainer.strategy.save_checkpoint(self.state, str(path))  # rank 0 writes
        adopt_last(trainer)
        return path

    def on_fit_started(self, trainer: Any) -> None:
        self.take(trainer, "the start of the fit", trainer.current_epoch)
        if trainer.ckpt_path is None and keeps_last(trainer):
            path = self.write(trainer)
            log.info("wrote the fit's starting state to %s (a kill during the first refresh resumes from it)", path)
        adopt_last(trainer)  # a resume from a last.ckpt written here (not by ModelCheckpoint) keeps its name

    def on_epoch_end(self, trainer: Any) -> None:
        self.take(trainer, f"the end of epoch {trainer.current_epoch}", trainer.current_epoch + 1)

    def on_exception(self, trainer: Any, exception: BaseException) -> None:
        if not isinstance(exception, (KeyboardInterrupt, SIGTERMException)) or self.state is None:
            return
        path = self.write(trainer)
        if trainer.is_global_zero:
            what = "Ctrl-C" if isinstance(exception, KeyboardInterrupt) else "SIGTERM"
            print(
                f"\n{what}: saved a resumable checkpoint of {self.label} to {path}. The resume starts at epoch "
                f"{self.next_epoch}: problems its refresh already tested come back from the refresh spill, and its "
                "training steps run again with the same batches and random states.\nResume with:\n"
                f"  {resume_command(path, keeps_last(trainer))}",
                flush=True,
            )
