"""GPU checks (skipped without CUDA): 4-bit QLoRA base, bf16 sampling log-probs, a training step."""

from __future__ import annotations

import pytest
import torch

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model, load_tokenizer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.mark.parametrize("four_bit", [False, True], ids=["bf16", "nf4"])
def test_lora_step_on_gpu(tiny_model_dir, four_bit):
    spec = ModelSpec(name=str(tiny_model_dir), dtype="bfloat16", device="cuda", load_in_4bit=four_bit)
    tok = load_tokenizer(spec)
    model = apply_lora(load_model(spec), LoraSettings(r=4, alpha=8))
    model.train()
    ids = tok(["def f():\n    return 1\n"], return_tensors="pt").input_ids.cuda()
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)


def test_bf16_beam_sampling_on_gpu(tiny_model_dir):
    from egcfg_pl.problems.problem import Problem, TestCase
    from egcfg_pl.sampling.beam import HFSampler
    from egcfg_pl.sampling.settings import GenerationSettings

    spec = ModelSpec(name=str(tiny_model_dir), dtype="bfloat16", device="cuda")
    model, tok = load_model(spec), load_tokenizer(spec)
    problem = Problem("t/0", "custom", "test", "Return 1.", (TestCase("assert", code="assert f() == 1"),), entry_point="f")
    sampler = HFSampler(model, tok, GenerationSettings(num_beams=3, num_return_sequences=3, max_new_tokens=16, progress=False))
    cands = sampler.sample([problem])
    assert len(cands) == 3 and all(c.logprob is not None and c.logprob < 0 for c in cands)
