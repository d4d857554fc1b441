"""``trainer.default_root_dir`` decides where every output of a CLI fit goes, a resume continues that folder, the
TensorBoard logs hold learning rate and gradient norm on one x-axis, and the adapter of the embedded alias names
the public hub model."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest

from btp_helpers import SHARED_MBPP, tiny_module
from egcfg_pl.lightning.cli import run_lightning_cli
from egcfg_pl.lightning.run_folder import PUBLIC_BASE_IDS
from egcfg_pl.models import EMBEDDED_ALIAS, ModelSpec

CONFIG = """
seed_everything: 0
sandbox: {{timeout: 2.0, workers: 2}}
trainer:
  accelerator: cpu
  devices: 1
  max_epochs: 1
  num_sanity_val_steps: 0
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  callbacks:
    - class_path: lightning.pytorch.callbacks.ModelCheckpoint
      init_args: {{save_last: true}}
refresh:
  generation: {{strategy: beam, num_beams: 2, num_return_sequences: 2, max_new_tokens: 12, progress: false}}
model:
  model: {{name: {model}, dtype: float32, device: cpu}}
  lora: {{r: 4, alpha: 8, dropout: 0.0}}
  evaluation: {{strategy: greedy, num_beams: 1, num_return_sequences: 1, max_new_tokens: 12, progress: false}}
  learning_rate: 0.01
data:
  train: {{dataset: mbpp, split: train, path: {mbpp}, limit: 4}}
  held_out: {{dataset: mbpp, split: test, path: {mbpp}, limit: 2}}
  batch_size: 2
  samples_per_epoch: 4
  max_length: 256
  replay: {{truncated: no_eos}}  # a random tiny model never ends within 12 tokens
"""


def test_default_root_dir_holds_every_output_and_a_resume_continues_it(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tmp_path / "tiny.yaml"
    config.write_text(CONFIG.format(model=tiny_model_dir, mbpp=SHARED_MBPP))
    cwd, root = tmp_path / "cwd", tmp_path / "run"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    args = ["fit", "--config", str(config), "--trainer.default_root_dir", str(root)]
    run_lightning_cli(args)
    first = capsys.readouterr().out
    run_lightning_cli([*args, "--trainer.max_epochs", "2", "--ckpt_path", "last"])
    second = capsys.readouterr().out

    assert list(cwd.iterdir()) == []  # nothing outside the run folder
    assert (root / "adapter" / "adapter_config.json").is_file()
    assert (root / "checkpoints" / "last.ckpt").is_file()
    assert (root / "eval_val_epoch0.json").is_file() and (root / "eval_val_epoch1.json").is_file()
    epochs = [json.loads(line)["epoch"] for line in (root / "experiences.jsonl").read_text().splitlines()]
    assert sorted(set(epochs)) == [0, 1] and epochs == sorted(epochs)
    assert not (root / "refresh_spill").exists()
    assert [p.name for p in (root / "tb").iterdir() if p.is_dir()] == []  # no version_N per resume
    for out in (first, second):
        assert f"LoRA adapter:     {root / 'adapter'}" in out
        assert f"last checkpoint:  {root / 'checkpoints' / 'last.ckpt'}" in out
        assert str(root / "eval_val_epoch0.json") in out and "tensorboard --logdir" in out

    events = EventAccumulator(str(root / "tb"), size_guidance={"histograms": 0, "scalars": 0})  # 0: keep all
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert "train/lr" in scalars and "train/grad_norm" in scalars and "hp_metric" not in scalars
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([0.01] * 4)
    # histograms use the global step (when the refresh ran) like every scalar: 2 steps per epoch
    assert [e.step for e in events.Histograms("refresh/p2value")] == [0, 2]


def test_adapter_of_the_embedded_alias_names_the_public_hub_model(tmp_path, tiny_model_dir):
    L.seed_everything(0)
    module = tiny_module(tiny_model_dir)
    module.configure_model()
    module.spec = ModelSpec(name=EMBEDDED_ALIAS)  # as if the embedded GGUF were loaded (the name decides)
    module.save_adapter(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["base_model_name_or_path"] == PUBLIC_BASE_IDS[EMBEDDED_ALIAS] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert module.model.peft_config["default"].base_model_name_or_path == str(tiny_model_dir)  # unchanged in memory
    module.spec = ModelSpec(name=str(tiny_model_dir))
    module.save_adapter(tmp_path / "local")
    local = json.loads((tmp_path / "local" / "adapter_config.json").read_text())
    assert Path(local["base_model_name_or_path"]) == Path(tiny_model_dir)  # a folder stays a folder
