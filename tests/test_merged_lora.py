"""Sampling with the LoRA adapter folded in: same model, and the frozen base comes back bit for bit."""

from __future__ import annotations

import pytest
import torch

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model, load_tokenizer
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sampling.beam import HFSampler
from egcfg_pl.sampling.merged_lora import can_merge, lora_layers, merged_lora
from egcfg_pl.sampling.settings import GenerationSettings


def trained_looking(model_dir, dtype: str):
    spec = ModelSpec(name=str(model_dir), dtype=dtype, device="cpu")
    base, tok = load_model(spec), load_tokenizer(spec)
    model = apply_lora(base, LoraSettings(r=4, alpha=64, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)  # a fresh LoRA B is zero, which would make merging a no-op
    return model.eval(), tok


def base_weights(model) -> list[torch.Tensor]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)]  # merged or not
    return [m.get_base_layer().weight.detach().clone() for m in layers]


def problems() -> list[Problem]:
    test = (TestCase(kind="assert", code="assert f(1) == 2", public=True),)
    return [Problem(id=f"custom/{i}", source="custom", split="test", statement="Add one to x. " * (i + 1),
                    tests=test, entry_point="f") for i in range(2)]


def test_plain_model_is_left_alone(tiny_model_dir):
    model = load_model(ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu"))
    assert not can_merge(model)
    with merged_lora(model) as merged:
        assert merged is False


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_merged_forward_matches_and_base_is_restored_exactly(tiny_model_dir, dtype):
    model, _ = trained_looking(tiny_model_dir, dtype)
    ids = torch.arange(3, 40).unsqueeze(0)
    before = base_weights(model)
    with torch.no_grad():
        unmerged = model(input_ids=ids).logits.float()
        with merged_lora(model) as merged:
            assert merged and not lora_layers(model)  # every adapter layer reports merged
            folded = model(input_ids=ids).logits.float()
            assert any(not torch.equal(w, b) for w, b in zip(base_weights(model), before))  # really merged
    tol = 1e-4 if dtype == "float32" else 0.1
    assert torch.allclose(folded, unmerged, atol=tol), (folded - unmerged).abs().max()
    after = base_weights(model)
    assert all(torch.equal(a, b) for a, b in zip(after, before))  # bit for bit, also in bf16
    assert len(lora_layers(model)) == len(before)  # adapters unmerged again
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits.float(), unmerged)


def test_restored_after_an_exception(tiny_model_dir):
    model, _ = trained_looking(tiny_model_dir, "bfloat16")
    before = base_weights(model)
    with pytest.raises(RuntimeError, match="boom"), torch.no_grad(), merged_lora(model):
        raise RuntimeError("boom")
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), before))
    assert len(lora_layers(model)) == len(before)


def test_sampler_gives_the_same_candidates_merged_or_not(tiny_model_dir):
    model, tok = trained_looking(tiny_model_dir, "float32")
    before = base_weights(model)
    settings = dict(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=8, progress=False,
                    stop_strings=[])
    slow = HFSampler(model, tok, GenerationSettings(merge_lora=False, **settings)).generate(problems())
    fast = HFSampler(model, tok, GenerationSettings(merge_lora=True, **settings)).generate(problems())
    assert [g.token_ids for g in fast] == [g.token_ids for g in slow]
    assert [g.logprob for g in fast] == pytest.approx([g.logprob for g in slow], abs=1e-3)
    assert all(torch.equal(a, b) for a, b in zip(base_weights(model), before))


def test_merge_is_judged_by_the_layers_not_the_quantized_flag(tiny_model_dir):
    model, _ = trained_looking(tiny_model_dir, "bfloat16")
    model.base_model.model.is_quantized = True  # what transformers sets on a (dequantized) GGUF checkpoint
    assert can_merge(model)

    class Params4bitLike(torch.nn.Parameter):
        """bitsandbytes keeps 4/8-bit weights in Parameter subclasses; merging those would re-quantize."""

    layer = lora_layers(model)[0].get_base_layer()
    layer.weight = Params4bitLike(layer.weight.detach(), requires_grad=False)
    assert not can_merge(model)
    with merged_lora(model) as merged:
        assert merged is False
