"""Generate from a LoRA-wrapped model with the adapter folded into the base weights, exactly undone after.

An unmerged LoRA layer runs ``base(x) + B(A(dropout(x))) * scale``: extra small kernels per adapted linear
layer and decoding step (with ``target_modules: all-linear``, 7 per transformer block). Folding
``W + scale * B @ A`` into the base weight removes them: measured on 2 CPU cores (bf16, SmolLM2-135M) the
merged model decodes as fast as the plain one, 1.16x the unmerged adapter end to end (``benchmarks/README.md``).
peft's ``unmerge_adapter`` subtracts the update again, which is not exact in bfloat16 (each merge/unmerge would
round every frozen weight once more, and the error would pile up over BTP iterations), so the base weights are
copied first and restored from the copy: the frozen base is bit-identical afterwards. The copy costs the adapted
layers' weights in memory. In bf16/fp16 the merged weight ``W + ΔW`` is itself rounded, so a small adapter
update is partly lost while sampling; that is why ``GenerationSettings.merge_lora`` is off by default.
Quantized (4/8-bit) bases are never merged (their merge is lossy).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def lora_layers(model) -> list:
    """peft tuner layers of ``model`` with unmerged adapters ([] for a plain model)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # peft is a dependency, but a plain HF model needs none of this
        return []
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer) and not m.merged]


def can_merge(model) -> bool:
    """True for a PeftModel whose adapted layers hold plain floating-point weights.

    Judged per layer, not by the model's ``is_quantized`` flag: a GGUF checkpoint (the embedded default) is
    flagged quantized by transformers but loads as plain bf16/fp32 tensors, while a bitsandbytes 4/8-bit
    layer keeps its weight in a ``Params4bit`` / ``Int8Params`` subclass (merging those would re-quantize).
    """
    if not hasattr(model, "merge_adapter"):
        return False
    layers = lora_layers(model)
    if not layers:
        return False
    for layer in layers:
        weight = getattr(layer.get_base_layer(), "weight", None)
        if type(weight) is not torch.nn.Parameter or weight.dtype not in FLOAT_DTYPES or weight.device.type == "meta":
            return False
    return True


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
