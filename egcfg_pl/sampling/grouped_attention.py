"""Eager attention that reads a grouped-query KV cache in place, for decoding on CPU (``attention: auto``).

transformers' ``eager`` attention first expands every key/value head to its query heads (``repeat_kv``: expand
+ reshape, i.e. a copy of the layer's whole cache, keys and values, at every step). SmolLM2-135M has 9 query
heads on 3 key/value heads, so each decode step wrote 3x its KV cache before multiplying; with beam 5 x 8
problems (40 rows of ~300 cached positions) that copy was about 40 % of a bf16 decode forward on 2 cores (the
forward took 13.2 s instead of 22.6 s for the same 8 MBPP train problems, beam 5, 48 tokens, side by side on
the loaded box, load average 5.6-6.1). Here the query heads that share a key/value head are stacked as the rows of one matrix:
the same dot products, one ``(group*q, d) @ (d, T)`` product per key/value head, softmax in fp32 as eager does.

Only for the model types in ``GROUPED_MODEL_TYPES`` (their attention passes nothing beyond mask, scaling and
dropout: no soft-capping, no attention sinks); ``cpu_attention`` says which implementation ``auto`` picks.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

NAME = "egcfg_grouped"
GROUPED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def grouped_attention_forward(module, query, key, value, attention_mask, scaling: float, dropout: float = 0.0,
                              **kwargs):
    """(rows, heads, q, d) queries over (rows, kv heads, T, d) keys / values -> ((rows, q, heads, d), weights).
    Inference only (no dropout)."""
    rows, heads, q, d = query.shape
    kv = key.shape[1]
    group = heads // kv  # query head h reads key/value head h // group (transformers' repeat_kv layout)
    stacked = query.reshape(rows, kv, group * q, d)
    weights = torch.matmul(stacked, key.transpose(2, 3)) * scaling  # (rows, kv, group*q, T)
    if attention_mask is not None:  # (rows, 1, q, T): the same for every head
        t = weights.shape[-1]
        weights = (weights.view(rows, kv, group, q, t) + attention_mask[:, :, None, :, :t]).view(rows, kv, -1, t)
    weights = torch.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    out = torch.matmul(weights, value)  # (rows, kv, group*q, d)
    return out.view(rows, heads, q, d).transpose(1, 2).contiguous(), weights


def cpu_attention(model) -> str:
    """``attention: auto`` on CPU: the grouped kernel for a grouped-query model of a known type, else ``eager``."""
    config = getattr(model, "config", None)
    heads = getattr(config, "num_attention_heads", None)
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    grouped = getattr(config, "model_type", None) in GROUPED_MODEL_TYPES and heads and kv_heads < heads
    return NAME if grouped else "eager"


AttentionInterface.register(NAME, grouped_attention_forward)
AttentionMaskInterface.register(NAME, eager_mask)
