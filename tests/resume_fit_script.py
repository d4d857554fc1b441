"""Run by test_resume.py in a subprocess: a tiny 2-epoch BTP fit that can kill or interrupt itself.

    python tests/resume_fit_script.py MODEL_DIR ROOT OUT_JSON [--kill sigkill|sigint|sigterm] [--at E:B]
        [--kill_on_sample N] [--ckpt_path P] [--seed S] [--no_checkpoint]

``--at E:B`` sends the signal at training batch B of epoch E; ``--kill_on_sample N`` sends it on the N-th
sampler call of the refresh (chunk_problems 2, so call 2 is the second chunk). OUT_JSON gets the losses of
every training step ({global_step: loss}), the sampled problem ids and the final epoch / step.
LoRA dropout is on, so the losses depend on the torch RNG.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from btp_helpers import refresh_callback, tiny_datamodule, tiny_module  # noqa: E402

from egcfg_pl.models import LoraSettings  # noqa: E402

SIGNALS = {"sigkill": signal.SIGKILL, "sigint": signal.SIGINT, "sigterm": signal.SIGTERM}


class Record(L.Callback):
    def __init__(self, out: dict, kill: signal.Signals | None, at: tuple[int, int] | None) -> None:
        self.out, self.kill, self.at = out, kill, at

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.out["losses"][str(trainer.global_step)] = float(outputs["loss"])
        if self.kill is not None and self.at == (trainer.current_epoch, batch_idx):
            os.kill(os.getpid(), self.kill)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model_dir")
    parser.add_argument("root")
    parser.add_argument("out")
    parser.add_argument("--kill", choices=sorted(SIGNALS))
    parser.add_argument("--at")
    parser.add_argument("--kill_on_sample", type=int)
    parser.add_argument("--ckpt_path")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_checkpoint", action="store_true")
    args = parser.parse_args()
    signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored

    out: dict = {"losses": {}, "sampled": []}
    L.seed_everything(args.seed)
    module = tiny_module(Path(args.model_dir))
    module.lora = LoraSettings(r=4, alpha=8, dropout=0.3)  # dropout draws from the torch RNG
    refresh = refresh_callback(chunk_problems=2)
    real = refresh.sampler
    kill = SIGNALS.get(args.kill or "")

    def sampler(pl_module):
        inner = real(pl_module)

        class Counting:
            def sample(self, problems, **kwargs):
                out["sampled"].append([p.id for p in problems])
                if args.kill_on_sample == len(out["sampled"]) and kill is not None:
                    os.kill(os.getpid(), kill)
                return inner.sample(problems, **kwargs)

        return Counting()

    refresh.sampler = sampler
    at = tuple(int(x) for x in args.at.split(":")) if args.at else None
    root = Path(args.root)
    callbacks = [refresh, Record(out, kill, at)]
    if not args.no_checkpoint:
        # <root>/checkpoints, as the CLI sets it (run_folder.py)
        callbacks.append(L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, max_epochs=2, default_root_dir=str(root),
        logger=L.pytorch.loggers.TensorBoardLogger(str(root), name="tb", version="", default_hp_metric=False),
        callbacks=callbacks, enable_checkpointing=not args.no_checkpoint, enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0, log_every_n_steps=1,
    )
    try:
        trainer.fit(module, tiny_datamodule(train=4), ckpt_path=args.ckpt_path)
    finally:
        out.update(epoch=trainer.current_epoch, step=trainer.global_step)
        Path(args.out).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
