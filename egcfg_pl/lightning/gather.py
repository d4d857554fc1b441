"""The one DDP gather: every rank's object, in rank order (``[local]`` in a single process).

A collective under DDP: every rank must call it. The refresh gathers experiences, the held-out evaluation its
per-problem records and scored ids, the checkpoint the RNG states.
"""

from __future__ import annotations

from typing import Any

import torch


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def gather_objects(local: Any) -> list[Any]:
    """``[rank 0's local, rank 1's local, ...]`` on every rank; ``[local]`` without a process group."""
    if not distributed():
        return [local]
    parts: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, local)
    return parts
