"""Run by test_ddp.py in a subprocess: a tiny BTP fit under DDP (2 CPU processes, gloo).

    python tests/ddp_fit_script.py MODEL_DIR OUT_DIR

Each rank writes its buffer state, step count, every full replay draw (``draws``) and the batches it
trained on (``trained``, as (problem id, program) pairs) to OUT_DIR/rank<N>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from btp_helpers import refresh_callback, tiny_datamodule, tiny_module  # noqa: E402

from egcfg_pl.lightning import datamodule as datamodule_module  # noqa: E402


def record_replay(dm, draws: list, trained: list) -> None:
    """Record each full draw of the buffer and each batch this rank's training loader yields."""
    sample = dm.buffer.sample

    def recording_sample(n: int):
        drawn = sample(n)
        draws.append([(e.problem_id, e.program) for e in drawn])
        return drawn

    dm.buffer.sample = recording_sample
    stream_iter = datamodule_module.ReplayStream.__iter__

    def recording_iter(stream):
        for batch in stream_iter(stream):
            trained.append([(e.problem_id, e.program) for e in batch])
            yield batch

    datamodule_module.ReplayStream.__iter__ = recording_iter


class CountSteps(L.Callback):
    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches += 1


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    L.seed_everything(0)
    module, dm = tiny_module(model_dir), tiny_datamodule(train=6, held_out=3)  # odd: the sampler pads rank 1
    draws: list = []
    trained: list = []
    record_replay(dm, draws, trained)
    steps = CountSteps()
    val: dict = {}  # this rank's validation metrics (every rank computes them; rank 0 writes the JSON)
    write = module._write_eval
    module._write_eval = lambda stage, epoch, metrics: (val.update(metrics), write(stage, epoch, metrics))
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=os.environ.get("DDP_STRATEGY", "ddp"), max_epochs=2, default_root_dir=str(out),
        callbacks=[refresh_callback(), steps], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1.0, check_val_every_n_epoch=2, logger=False,
    )
    trainer.fit(module, dm)
    state = dm.buffer.state_dict()
    record = {
        "experiences": state["experiences"], "rng": str(state["rng"]), "global_step": trainer.global_step,
        "world_size": trainer.world_size, "val": {**val, "path": str(out / "eval_val_epoch1.json")}, "draws": draws, "trained": trained,
        "batch_size": dm.hparams.batch_size, "batches_trained": steps.batches,
        "lora_sum": float(sum(p.detach().double().sum() for n, p in module.named_parameters() if p.requires_grad)),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
