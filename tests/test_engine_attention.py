"""The grouped-query eager attention (``attention: auto`` on CPU): the logits of transformers' eager attention,
with left padding and a cache; picked only for grouped-query models of a known type."""

from __future__ import annotations

import types

import torch

from egcfg_pl.sampling.engine import attention
from egcfg_pl.sampling.grouped_attention import NAME, cpu_attention
from tests.test_engine import tiny  # noqa: F401 (fixture)


def logits_with(model, implementation: str, ids, mask):
    """Prefill of a left-padded batch, then two cached one-token steps: every logit the decoder reads."""
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad(), attention(model, implementation):
        out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
        logits, cache = [out.logits], out.past_key_values
        for step in range(2):
            mask = torch.cat([mask, mask.new_ones(len(mask), 1)], dim=1)
            out = model(input_ids=ids[:, -1:], attention_mask=mask, position_ids=pos[:, -1:] + 1 + step,
                        past_key_values=cache, use_cache=True)
            logits.append(out.logits)
    return logits


def test_grouped_attention_gives_eager_logits(tiny):
    model, _ = tiny
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # the tiny Llama is grouped
    torch.manual_seed(0)
    ids = torch.randint(10, 1000, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # left padding
    mask[2, :1] = 0
    for eager, grouped in zip(logits_with(model, "eager", ids, mask), logits_with(model, NAME, ids, mask)):
        real = mask[:, -eager.shape[1] :].bool()  # padded positions' logits are never read
        assert torch.allclose(eager[real], grouped[real], atol=1e-4)


def test_auto_picks_the_grouped_kernel_only_for_known_grouped_models(tiny):
    model, _ = tiny
    assert cpu_attention(model) == NAME

    def fake(model_type, heads, kv):
        return types.SimpleNamespace(config=types.SimpleNamespace(
            model_type=model_type, num_attention_heads=heads, num_key_value_heads=kv))

    assert cpu_attention(fake("llama", 8, 8)) == "eager"  # no grouping: nothing to save
    assert cpu_attention(fake("gemma2", 8, 2)) == "eager"  # soft-capping etc.: not this kernel
    assert cpu_attention(fake("qwen2", 14, 2)) == NAME
