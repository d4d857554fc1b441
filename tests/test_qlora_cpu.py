"""QLoRA on the CPU: bitsandbytes' CPU backend loads NF4 weights, LoRA trains on top, generation works."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model

pytestmark = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")


def test_nf4_load_and_a_lora_step_on_cpu(tiny_model_dir):
    import bitsandbytes as bnb

    torch.manual_seed(0)
    model = load_model(ModelSpec(name=str(tiny_model_dir), device="cpu", dtype="float32", load_in_4bit=True))
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert model.is_loaded_in_4bit and quantized and quantized[0].weight.quant_state.quant_type == "nf4"
    assert quantized[0].weight.dtype == torch.uint8  # packed 4-bit storage, not dense weights

    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8, dropout=0.0))
    trainable = {n: p for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in trainable.items()}
    ids = torch.randint(3, 1000, (2, 12))
    optimizer = torch.optim.AdamW(trainable.values(), lr=1e-2)
    peft_model.train()
    losses = []
    for _ in range(3):
        loss = peft_model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0]  # the adapter learns on the 4-bit base
    assert any(not torch.equal(before[n], p) for n, p in trainable.items())
    peft_model.eval()
    out = peft_model.generate(input_ids=ids[:1, :4], attention_mask=torch.ones(1, 4, dtype=torch.long),
                              max_new_tokens=3, do_sample=False)
    assert out.shape == (1, 7)


def test_btp_fit_step_on_a_4bit_cpu_base(tmp_path, tiny_model_dir, shared_data):
    """The whole loop (refresh sampling on the 4-bit base + LoRA, replay step, held-out validation) on the CPU."""
    from btp_helpers import refresh_callback, tiny_datamodule, tiny_module, tiny_trainer

    module = tiny_module(tiny_model_dir)
    module.spec = ModelSpec(name=str(tiny_model_dir), device="cpu", dtype="float32", load_in_4bit=True)
    trainer = tiny_trainer(tmp_path, 1, [refresh_callback()], max_steps=1, limit_val_batches=1)
    trainer.fit(module, tiny_datamodule(train=2, held_out=1))
    assert module.model.is_loaded_in_4bit and trainer.global_step == 1
    assert list(tmp_path.glob("eval_val_epoch*.json"))  # the held-out validation ran and wrote its results
