"""openai / deepseek modes: an API is the model (refresh + held-out answers), nothing local is loaded."""

from __future__ import annotations

import pytest

from btp_helpers import tiny_trainer
from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.lightning.run_folder import latest_eval_json
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.problems import ProblemSet
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sampling.api import ApiSettings
from egcfg_pl.sandbox import SandboxConfig
from fault_server import FaultServer


def problems(split: str, count: int) -> list[Problem]:
    return [
        Problem(f"toy/{split}{i}", "custom", split, f"Return a pair ({split} {i}).",
                (TestCase("assert", code="assert answer()[1] >= 0"), TestCase("assert", code="assert answer()[1] == 0")),
                entry_point="answer")
        for i in range(count)
    ]


def test_openai_mode_fills_the_buffer_and_scores_the_api_on_held_out(tmp_path):
    sandbox = SandboxConfig(timeout=2.0, workers=2)
    with FaultServer() as server:
        api = ApiSettings(model="fake", provider="custom", base_url=server.base_url, api_key_env="none", n=2,
                          cache_dir=str(tmp_path / "cache"))
        module = BTPModule(mode="btp_only", api=api, pass_k=[1, 2], sandbox=sandbox)
        dm = BTPDataModule(held_out=ProblemSet(dataset="mbpp"), samples_per_epoch=1)
        dm.train_problems, dm.held_out_problems = problems("train", 3), problems("test", 2)
        tiny_trainer(tmp_path, 1, [ReplayRefresh(sandbox=sandbox)], limit_val_batches=1.0).fit(module, dm)
    assert module.model is None  # no local weights in this mode
    assert len(dm.buffer) == 6  # 3 problems x n=2 distinct programs
    # choice 0 passes both tests, choice 1 only the first: the partial pass rate is kept
    assert sorted(e.pass_rate for e in dm.buffer.experiences) == [0.5] * 3 + [1.0] * 3
    assert all(e.possibility is not None and 0 < e.possibility <= 1 for e in dm.buffer.experiences)
    metrics = EvalReport.from_json(latest_eval_json(tmp_path, "val")).metrics  # the results come back as a file
    assert metrics["pass@1"] == pytest.approx(0.5) and metrics["pass@2"] == pytest.approx(1.0)


def test_api_model_needs_btp_only():
    api = ApiSettings(model="fake", provider="custom", base_url="http://127.0.0.1:9/v1", api_key_env="none")
    with pytest.raises(ValueError, match="btp_only"):
        BTPModule(api=api)
