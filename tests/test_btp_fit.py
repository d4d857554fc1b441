"""The BTP loop end to end on a tiny random model: refresh → buffer → LoRA steps → checkpoint/resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from btp_helpers import refresh_callback, tiny_datamodule, tiny_module, tiny_trainer


class RecordBatches(L.Callback):
    def __init__(self) -> None:
        self.batches: dict[int, list[list[int]]] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.batches.setdefault(trainer.current_epoch, []).append(batch["input_ids"].tolist())


def contents(buffer) -> list[tuple]:
    """What a buffer holds, without the wall-clock timings of the sandbox runs."""
    return [
        (e.problem_id, e.program, e.candidate.logprob, e.candidate.iteration, e.p2value, [r.status for r in e.verdict.results])
        for e in buffer.experiences
    ]


def lora_weights(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


def test_fit_fills_buffer_keeps_failures_and_trains_only_lora(tmp_path, tiny_model_dir):
    L.seed_everything(0)
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule()
    trainer = tiny_trainer(tmp_path, 1, [refresh_callback()])
    module.configure_model()
    before = lora_weights(module)
    frozen = {n: p.detach().clone() for n, p in module.named_parameters() if not p.requires_grad}
    assert before and all("lora" in n for n in before)
    trainer.fit(module, dm)

    assert len(dm.buffer) > 0
    assert all(e.pass_rate == 0.0 for e in dm.buffer.experiences)  # random model: failures are kept
    assert len({round(e.possibility, 6) for e in dm.buffer.experiences}) > 1  # possibility is not a constant
    after = lora_weights(module)
    assert any(not torch.equal(before[n], after[n]) for n in before), "no LoRA weight changed"
    assert all(torch.equal(p, frozen[n]) for n, p in module.named_parameters() if n in frozen)
    assert (module.adapter_dir() / "adapter_config.json").is_file()
    assert (tmp_path / "tb").exists()


def test_btp_only_samples_and_tests_without_training(tmp_path, tiny_model_dir):
    L.seed_everything(0)
    module, dm = tiny_module(tiny_model_dir, mode="btp_only"), tiny_datamodule()
    trainer = tiny_trainer(tmp_path, 2, [refresh_callback()])
    module.configure_model()
    weights = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer.fit(module, dm)
    assert len(dm.buffer) > 0
    assert not any(p.requires_grad for p in module.parameters())
    assert all(torch.equal(p, weights[n]) for n, p in module.named_parameters())


def test_resume_gives_same_buffer_and_next_batches(tmp_path, tiny_model_dir):
    ckpt_cb = lambda d: L.pytorch.callbacks.ModelCheckpoint(dirpath=d, save_last=True, every_n_epochs=1, save_top_k=-1)

    L.seed_everything(0)
    straight, dm_a, rec_a = tiny_module(tiny_model_dir), tiny_datamodule(), RecordBatches()
    tiny_trainer(tmp_path / "a", 2, [refresh_callback(), rec_a, ckpt_cb(tmp_path / "a_ckpt")]).fit(straight, dm_a)

    L.seed_everything(0)
    first, dm_b = tiny_module(tiny_model_dir), tiny_datamodule()
    tiny_trainer(tmp_path / "b", 1, [refresh_callback(), ckpt_cb(tmp_path / "b_ckpt")]).fit(first, dm_b)
    ckpt = tmp_path / "b_ckpt" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=False)
    assert all("lora" in k for k in saved["state_dict"]), "checkpoint should hold only trainable weights"

    L.seed_everything(123)  # a different process state: everything needed must come from the checkpoint
    resumed, dm_c, rec_c = tiny_module(tiny_model_dir), tiny_datamodule(seed=999), RecordBatches()
    tiny_trainer(tmp_path / "c", 2, [refresh_callback(), rec_c]).fit(resumed, dm_c, ckpt_path=str(ckpt))

    assert rec_c.batches[1] == rec_a.batches[1]
    assert contents(dm_c.buffer) == contents(dm_a.buffer)
    assert dm_c.buffer.rng.bit_generator.state == dm_a.buffer.rng.bit_generator.state


def test_adapter_reloads_with_plain_peft(tmp_path, tiny_model_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    L.seed_everything(0)
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule()
    tiny_trainer(tmp_path, 1, [refresh_callback()]).fit(module, dm)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(base, module.adapter_dir()).eval()
    ids = torch.tensor([[1, 20, 300, 4000, 50]])
    module.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, module.model(ids).logits)


def test_big_to_small_source_model_differs_from_target(tmp_path, tiny_model_dir, tiny_source_dir):
    from egcfg_pl.models import ModelSpec

    L.seed_everything(0)
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule()
    refresh = refresh_callback(source_model=ModelSpec(name=str(tiny_source_dir), dtype="float32", device="cpu"))
    tiny_trainer(tmp_path, 1, [refresh]).fit(module, dm)
    assert refresh._sampler is not None and refresh._sampler.model is not module.model
    assert {e.candidate.source for e in dm.buffer.experiences} == {str(tiny_source_dir)}


def test_overlapping_train_and_held_out_problems_are_refused(tmp_path, tiny_model_dir):
    from egcfg_pl.lightning.datamodule import BTPDataModule
    from egcfg_pl.problems import ProblemSet

    from btp_helpers import SHARED_MBPP

    same = ProblemSet(dataset="mbpp", split="train", path=str(SHARED_MBPP), limit=3)
    dm = BTPDataModule(held_out=same, train=same)
    with pytest.raises(ValueError, match="overlap"):
        dm.setup("fit")
