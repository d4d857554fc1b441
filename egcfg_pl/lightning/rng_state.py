"""The global random states (python, numpy, torch CPU / CUDA) of every rank, saved in checkpoints.

Lightning's checkpoint does not hold them, so a resumed fit drew other LoRA-dropout masks than the
uninterrupted one and its losses drifted. The module stores one entry per rank (gathered: only rank 0
writes the file) and each rank restores its own when the checkpoint is loaded. The sampler forks the RNG
(``sampling/beam.py``) and the train DataLoader has its own generator, so after a restore the next draws
are the training steps' — as in the run that was not interrupted.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from egcfg_pl.lightning.gather import gather_objects

KEY = "rng_states"


def capture() -> dict[str, Any]:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    # plain ints, not an ndarray: Lightning loads checkpoints with torch.load(weights_only=True)
    numpy_state = (str(name), [int(k) for k in keys], int(pos), int(has_gauss), float(cached))
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def capture_all_ranks() -> list[dict[str, Any]]:
    """Every rank's states in rank order (a collective under DDP: every rank must call it)."""
    return gather_objects(capture())


def restore_rank(states: list[dict[str, Any]] | None, rank: int, world_size: int) -> bool:
    """Restore this rank's states; False (nothing restored) for an older checkpoint or another world size."""
    if not states or len(states) != world_size:
        return False
    restore(states[rank])
    return True
