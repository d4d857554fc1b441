"""Run by test_ddp.py in a subprocess: a tiny BTP fit under DDP (2 CPU processes, gloo).

    python tests/ddp_fit_script.py MODEL_DIR OUT_DIR

Each rank writes its buffer state and step count to OUT_DIR/rank<N>.json.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import lightning as L

sys.path.insert(0, str(Path(__file__).resolve().parent))
from btp_helpers import refresh_callback, tiny_datamodule, tiny_module  # noqa: E402


def main() -> None:
    model_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
    L.seed_everything(0)
    module, dm = tiny_module(model_dir), tiny_datamodule(train=6, held_out=3)  # odd: the sampler pads rank 1
    trainer = L.Trainer(
        accelerator="cpu", devices=2, strategy=os.environ.get("DDP_STRATEGY", "ddp"), max_epochs=2, default_root_dir=str(out),
        callbacks=[refresh_callback()], enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=1.0, check_val_every_n_epoch=2, logger=False,
    )
    trainer.fit(module, dm)
    state = dm.buffer.state_dict()
    record = {
        "experiences": state["experiences"], "rng": str(state["rng"]), "global_step": trainer.global_step,
        "world_size": trainer.world_size, "val": module.last_eval,
        "lora_sum": float(sum(p.detach().double().sum() for n, p in module.named_parameters() if p.requires_grad)),
    }
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


if __name__ == "__main__":
    main()
