"""BTPModule checks: held-out P2Value settings, checkpoint allow-list, pass_k, final-weights validation,
exact LoRA keys on load, and DDP padding duplicates in held-out metrics."""

from __future__ import annotations

import dataclasses
import json
import math
import multiprocessing as mp
import sys
import typing
from pathlib import Path

import lightning as L
import pytest
import torch

from btp_helpers import SHARED_MBPP, refresh_callback, tiny_datamodule, tiny_module, tiny_trainer
from egcfg_pl.lightning.checkpoint_types import CHECKPOINT_TYPES
from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.held_out import HeldOutEvaluator, claimed_problem_ids
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.models import LoraSettings, ModelSpec
from egcfg_pl.problems import ProblemSet
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.lightning.run_folder import latest_eval_json
from egcfg_pl.replay import ReplaySettings
from egcfg_pl.sampling.api import ApiSettings
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig
from test_metrics_report import ADD, CANDIDATES, SQ, InProcessExecutor


# -- 1. held-out P2Value follows the replay settings (the CLI links model.scoring to data.replay) -----------
@pytest.mark.parametrize("alpha,form", [(0.0, "normalized"), (1.0, "raw")])
def test_held_out_p2value_uses_replay_alpha_and_possibility(tmp_path, tiny_model_dir, alpha, form):
    module = tiny_module(tiny_model_dir, results_dir=str(tmp_path / "eval"),
                         scoring=ReplaySettings(p2value_alpha=alpha, possibility_form=form))
    dm = BTPDataModule(held_out=ProblemSet(dataset="mbpp", split="test", path=str(SHARED_MBPP), limit=2))
    tiny_trainer(tmp_path, 1, []).test(module, dm, verbose=False)
    report = json.loads(latest_eval_json(tmp_path / "eval", "test").read_text())  # the results come back as a file
    got = report["metrics"]
    candidates = [c for p in report["problems"] for c in p["candidates"]]
    assert candidates and all(c["logprob"] is not None for c in candidates)
    if alpha == 0.0:  # P2Value = pass rate
        assert got["p2value_mean"] == pytest.approx(got["avg_pass_rate"])
    else:  # P2Value = possibility, here the raw product exp(logprob)
        assert got["p2value_mean"] == pytest.approx(got["possibility_mean"])
        for c in candidates:
            assert c["possibility"] == pytest.approx(math.exp(c["logprob"]))
        assert got["possibility_mean"] == pytest.approx(sum(math.exp(c["logprob"]) for c in candidates) / len(candidates))
    assert report["config"]["p2value_alpha"] == alpha and report["config"]["possibility_form"] == form


# -- 2. every dataclass in the saved hyper-parameters is allow-listed -----------------------------------
def _dataclasses_in(annotation, found: set[type]) -> None:
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if annotation in found:
            return
        found.add(annotation)
        for hint in typing.get_type_hints(annotation).values():
            _dataclasses_in(hint, found)
        return
    for arg in typing.get_args(annotation):
        _dataclasses_in(arg, found)


def test_every_hparam_dataclass_is_allow_listed():
    found: set[type] = set()
    for cls in (BTPModule, BTPDataModule):
        for name, hint in typing.get_type_hints(cls.__init__).items():
            if name != "return":
                _dataclasses_in(hint, found)
    assert ApiSettings in found and ReplaySettings in found  # the walk reaches the nested settings
    missing = {t.__name__ for t in found} - {t.__name__ for t in CHECKPOINT_TYPES}
    assert not missing, f"add {sorted(missing)} to egcfg_pl/lightning/checkpoint_types.py"


def test_api_mode_hparams_load_with_weights_only(tmp_path):
    api = ApiSettings(model="fake", provider="custom", base_url="http://127.0.0.1:9/v1", api_key_env="none", n=2)
    module = BTPModule(mode="btp_only", api=api, pass_k=[1, 2])
    dm = BTPDataModule(held_out=ProblemSet(dataset="mbpp"), replay=ReplaySettings(p2value_alpha=0.3))
    path = tmp_path / "hparams.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "datamodule_hyper_parameters": dict(dm.hparams)}, path)
    loaded = torch.load(path, weights_only=True)
    assert loaded["hyper_parameters"]["api"] == api
    assert loaded["datamodule_hyper_parameters"]["replay"].p2value_alpha == 0.3


# -- 3. pass_k must fit the candidates per problem ------------------------------------------------------
def test_pass_k_larger_than_candidates_is_refused():
    with pytest.raises(ValueError, match=r"model\.pass_k \[5\] exceed the 1 held-out candidates.*num_return_sequences"):
        BTPModule(pass_k=[1, 5])  # greedy: one candidate per problem
    sample = GenerationSettings(strategy="sample", num_return_sequences=5)
    assert BTPModule(evaluation=sample, pass_k=[1, 5]).pass_k == [1, 5]
    api = ApiSettings(model="fake", provider="custom", base_url="http://127.0.0.1:9/v1", api_key_env="none", n=2)
    with pytest.raises(ValueError, match=r"model\.pass_k \[5\].*model\.api\.n"):
        BTPModule(mode="btp_only", api=api, pass_k=[1, 5])
    with pytest.raises(ValueError, match=r"k >= 1"):
        BTPModule(pass_k=[0])


# -- 4. the fine-tuned weights are always validated -----------------------------------------------------
class RecordingLogger(L.pytorch.loggers.Logger):
    def __init__(self) -> None:
        super().__init__()
        self.metrics: list[tuple[int | None, dict]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.append((step, dict(metrics)))


def _fit_counting_evals(tmp_path, model_dir, **trainer_kwargs):
    L.seed_everything(0)
    module, dm, logger = tiny_module(model_dir, results_dir=str(tmp_path / "eval")), tiny_datamodule(), RecordingLogger()
    calls = []
    step = module._eval_step
    module._eval_step = lambda stage, batch: (calls.append(stage), step(stage, batch))
    trainer = L.Trainer(
        accelerator="cpu", devices=1, default_root_dir=str(tmp_path), logger=logger, callbacks=[refresh_callback()],
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0,
        **trainer_kwargs,
    )
    trainer.fit(module, dm)
    return module, trainer, logger, calls


def test_final_weights_are_validated_when_the_schedule_skips_them(tmp_path, tiny_model_dir):
    module, trainer, logger, calls = _fit_counting_evals(tmp_path, tiny_model_dir, max_epochs=1, check_val_every_n_epoch=3)
    assert trainer.global_step > 0 and calls == ["val"]  # 2 problems, one batch
    assert latest_eval_json(tmp_path / "eval", "val") == tmp_path / "eval" / "eval_val_epoch0.json"
    assert json.loads((tmp_path / "eval" / "eval_val_epoch0.json").read_text())["metrics"]["num_problems"] == 2
    logged = [m for step, m in logger.metrics if "val/num_problems" in m]
    assert logged and logged[-1]["val/num_problems"] == 2 and "val/pass@1" in logged[-1]


def test_no_second_validation_when_the_final_weights_were_validated(tmp_path, tiny_model_dir):
    module, _, _, calls = _fit_counting_evals(tmp_path, tiny_model_dir, max_epochs=1, check_val_every_n_epoch=1)
    assert calls == ["val"]
    assert json.loads(latest_eval_json(tmp_path / "eval", "val").read_text())["metrics"]["num_problems"] == 2


def test_no_final_validation_when_validation_is_disabled(tmp_path, tiny_model_dir):
    module, _, _, calls = _fit_counting_evals(
        tmp_path, tiny_model_dir, max_epochs=1, check_val_every_n_epoch=3, limit_val_batches=0
    )
    assert calls == []
    assert not list((tmp_path / "eval").glob("eval_*.json"))  # the folder holds the adapter only


# -- 5. a checkpoint must hold exactly the module's trainable (LoRA) weights ----------------------------
@pytest.fixture(scope="module")
def lora_checkpoint(tmp_path_factory, tiny_model_dir) -> Path:
    root = tmp_path_factory.mktemp("lora_ckpt")
    L.seed_everything(0)
    ckpt = L.pytorch.callbacks.ModelCheckpoint(dirpath=root / "ckpt", save_last=True)
    tiny_trainer(root, 1, [refresh_callback(), ckpt]).fit(tiny_module(tiny_model_dir), tiny_datamodule())
    return root / "ckpt" / "last.ckpt"


def _test_with(module: BTPModule, tmp_path: Path, ckpt: Path) -> None:
    dm = tiny_datamodule(held_out=1)
    tiny_trainer(tmp_path, 1, []).test(module, dm, ckpt_path=str(ckpt), verbose=False)


def test_matching_lora_checkpoint_loads(tmp_path, tiny_model_dir, lora_checkpoint):
    module = tiny_module(tiny_model_dir)
    _test_with(module, tmp_path, lora_checkpoint)
    saved = torch.load(lora_checkpoint, weights_only=True)["state_dict"]
    params = dict(module.named_parameters())
    assert saved and all(torch.equal(params[k], v) for k, v in saved.items())


def test_lora_checkpoint_into_base_model_is_refused(tmp_path, tiny_model_dir, lora_checkpoint):
    module = BTPModule(model=ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu"), lora=None)
    with pytest.raises(ValueError, match=r"0 missing.*unexpected.*lora_A.*model\.lora"):
        _test_with(module, tmp_path, lora_checkpoint)


def test_lora_target_modules_mismatch_is_refused(tmp_path, tiny_model_dir, lora_checkpoint):
    module = BTPModule(
        model=ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu"),
        lora=LoraSettings(r=4, alpha=8, dropout=0.0, target_modules=["q_proj", "v_proj"]),
    )
    with pytest.raises(ValueError, match=r"unexpected.*mlp.*model\.lora"):
        _test_with(module, tmp_path, lora_checkpoint)


def test_checkpoint_without_lora_weights_is_refused(tmp_path, tiny_model_dir, lora_checkpoint):
    checkpoint = torch.load(lora_checkpoint, weights_only=True)
    checkpoint["state_dict"] = {}  # as written by a lora: null / btp_only run
    empty = tmp_path / "empty.ckpt"
    torch.save(checkpoint, empty)
    with pytest.raises(ValueError, match=r"missing \(e\.g\. \['model\..*lora.*0 unexpected.*model\.lora"):
        _test_with(tiny_module(tiny_model_dir), tmp_path, empty)


# -- 6. DDP padding duplicates are counted once ---------------------------------------------------------
NEG = Problem(
    id="toy/neg", source="custom", split="test", statement="Negate a number.",
    tests=(TestCase("assert", code="assert neg(2) == -2"), TestCase("assert", code="assert neg(0) == 0")),
    entry_point="neg",
)
TOY_CANDIDATES = {
    ADD.id: CANDIDATES[:3],
    SQ.id: CANDIDATES[3:],
    NEG.id: [Candidate(NEG.id, "def neg(x):\n    return -x\n", "", -1.0, 8, source="toy", rank=0),
             Candidate(NEG.id, "def neg(x):\n    return x\n", "", -3.0, 8, source="toy", rank=1)],
}
# Lightning's DistributedSampler for 3 problems on 2 ranks: indices [0, 1, 2, 0] -> rank 0 [0, 2], rank 1 [1, 0]
SHARDS = [[ADD, NEG], [SQ, ADD]]
TIME_KEYS = {"runtime_s", "tokens_per_s"}


class ToySampler:
    name = "toy"

    def sample(self, problems, *, iteration=0, stream=()):
        return [c for p in problems for c in TOY_CANDIDATES[p.id]]


def _evaluate(shard, path: Path) -> dict:
    evaluator = HeldOutEvaluator(SandboxConfig(), (1, 2), "val", executor=InProcessExecutor())
    for problem in shard:  # one problem per batch, as in a DataLoader of batch size 1
        evaluator.step(ToySampler(), [problem])
    metrics = evaluator.compute()
    evaluator.write_report(path, {"stage": "val"})
    return metrics


def _rank(rank: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        metrics = _evaluate(SHARDS[rank], Path(f"{out}.json"))
        Path(f"{out}.{rank}").write_text(json.dumps(metrics))
    finally:
        dist.destroy_process_group()


def test_claimed_problem_ids_keep_the_first_rank():
    parts = [["a", "c"], ["b", "a"], ["a"]]
    assert [claimed_problem_ids(parts, r) for r in range(3)] == [{"a", "c"}, {"b"}, set()]


@pytest.mark.skipif(sys.platform != "linux", reason="uses fork to start the ranks quickly")
def test_ddp_padding_duplicates_are_counted_once(tmp_path):
    out = str(tmp_path / "rank")
    ctx = mp.get_context("fork")
    procs = [ctx.Process(target=_rank, args=(r, str(tmp_path / "init"), out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    expected = _evaluate([ADD, SQ, NEG], tmp_path / "single.json")
    assert expected["num_problems"] == 3 and expected["num_candidates"] == 8
    report = json.loads(Path(f"{out}.json").read_text())
    assert sorted(p["problem_id"] for p in report["problems"]) == sorted([ADD.id, SQ.id, NEG.id])
    for rank in range(2):
        got = json.loads(Path(f"{out}.{rank}").read_text())
        for key, value in expected.items():
            if key not in TIME_KEYS:
                assert got[key] == pytest.approx(value, nan_ok=True), (rank, key)
    for key, value in expected.items():
        if key not in TIME_KEYS:
            assert report["metrics"][key] == pytest.approx(value, nan_ok=True), key
    assert report["histograms"] == json.loads((tmp_path / "single.json").read_text())["histograms"]
