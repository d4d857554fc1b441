"""Generate from a LoRA-wrapped model with the adapter folded into the base weights, exactly undone after.

An unmerged LoRA layer runs ``base(x) + B(A(dropout(x))) * scale``: four extra small ops per adapted
linear layer and decoding step. With ``target_modules: all-linear`` that is ~7 x layers x 4 extra kernels per
token, which dominates decoding time for small models on CPU (see ``benchmarks/README.md``, Sampling).
Folding ``W + scale * B @ A`` into the base weight removes them. peft's ``unmerge_adapter`` subtracts the
update again, which is not exact in bfloat16 (each merge/unmerge would round every frozen weight once more,
and the error would pile up over BTP iterations), so the base weights are copied first and restored from the
copy: the frozen base is bit-identical afterwards. The copy costs the adapted layers' weights in memory
(for the 135M embedded model ~0.2 GB in bf16); quantized bases (4/8-bit) are never merged (their merge is lossy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


def lora_layers(model) -> list:
    """peft tuner layers of ``model`` with unmerged adapters ([] for a plain model)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is a dependency, but a plain HF model needs none of this
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]


def can_merge(model) -> bool:
    """True for a PeftModel over full-precision weights (not 4/8-bit, not offloaded to meta)."""
    if not hasattr(model, "merge_adapter") or not lora_layers(model):
        return False
    base = getattr(model, "base_model", model)
    inner = getattr(base, "model", base)
    if any(getattr(inner, flag, False) for flag in ("is_loaded_in_4bit", "is_loaded_in_8bit", "is_quantized")):
        return False
    return all(m.get_base_layer().weight.device.type != "meta" for m in lora_layers(model))


@contextmanager
def merged_lora(model, enabled: bool = True) -> Iterator[bool]:
    """Inside the block the adapter is folded into ``model``'s base weights; yields whether it was.

    On exit (also on an exception) the adapter is unmerged and every base weight it touched is restored
    bit for bit from a copy. Run it under ``torch.no_grad`` and never train inside it.
    """
    if not enabled or not can_merge(model):
        yield False
        return
    weights = [m.get_base_layer().weight for m in lora_layers(model)]
    with torch.no_grad():
        saved = [w.detach().clone() for w in weights]
    model.merge_adapter()
    try:
        yield True
    finally:
        model.unmerge_adapter()
        with torch.no_grad():
            for w, copy in zip(weights, saved):
                w.copy_(copy)
