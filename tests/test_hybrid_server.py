"""hybrid mode end to end against a real OpenAI-compatible server: llama-cpp-python serving the embedded
SmolLM2 GGUF on 127.0.0.1 writes the refresh candidates, the tiny random local target learns them with LoRA,
then the target (not the API) is evaluated on held-out MBPP problems. Skipped, with the build failure as the
reason, only when the server package could not be built or imported (the fixture's own check)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import lightning as L
import pytest
import torch

from btp_helpers import tiny_datamodule, tiny_module, tiny_trainer
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.lightning.run_folder import latest_eval_json
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.sampling.api import ApiSampler, ApiSettings
from egcfg_pl.sandbox import SandboxConfig
from test_api_server import llama_server  # noqa: F401 (the session-scoped server fixture, reused)

TRAIN, HELD_OUT, N = 2, 2, 2


def trainable(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}


@pytest.mark.server
@pytest.mark.slow
def test_hybrid_fit_api_source_trains_local_lora_target(llama_server, tmp_path, tiny_model_dir):  # noqa: F811
    L.seed_everything(0)
    # llama.cpp's server answers one request at a time: concurrency 1 keeps queued requests from timing out,
    # and a generous timeout keeps a slow answer on a busy machine from being thrown away and asked again
    api = ApiSettings(model=llama_server.alias, provider="custom", base_url=llama_server.base_url, api_key_env="none",
                      n=N, max_tokens=96, concurrency=1, timeout=300.0, cache_dir=str(tmp_path / "api_cache"))
    refresh = ReplayRefresh(source_api=api, sandbox=SandboxConfig(timeout=2.0, workers=2))
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule(train=TRAIN, held_out=HELD_OUT)
    module.configure_model()
    before = trainable(module)
    assert before and all("lora" in n for n in before)

    tiny_trainer(tmp_path, 1, [refresh], limit_val_batches=1.0).fit(module, dm)

    # the buffer holds the API's candidates, with possibilities from the server's token log-probs
    sampler = refresh._sampler
    assert isinstance(sampler, ApiSampler) and sampler.requests_sent > 0 and sampler.unknown_possibility == 0
    experiences = dm.buffer.experiences
    assert 0 < len(experiences) <= TRAIN * N
    assert {e.problem_id for e in experiences} <= {p.id for p in dm.train_problems}
    for e in experiences:
        assert e.candidate.source == sampler.name == f"custom:{llama_server.alias}"
        assert e.candidate.logprob is not None and math.isfinite(e.candidate.logprob) and e.candidate.num_tokens > 0
        assert e.possibility is not None and 0 < e.possibility <= 1
    assert refresh.last_stats["refresh/candidates"] == TRAIN * N
    saved = [json.loads(line) for line in (Path(tmp_path) / "experiences.jsonl").open()]
    assert len(saved) == TRAIN * N

    # the local target trained: LoRA weights moved
    after = trainable(module)
    assert any(not torch.equal(before[n], after[n]) for n in before), "no LoRA weight changed"
    assert (module.adapter_dir() / "adapter_config.json").is_file()

    # held-out evaluation ran on the target (not the API) and wrote its results JSON
    report = EvalReport.from_json(latest_eval_json(tmp_path, "val"))  # the results come back as a file
    assert int(report.metrics["num_problems"]) == HELD_OUT
    assert report.config["model"] == str(tiny_model_dir) and report.config["mode"] == "finetune"
    assert sorted(p.problem_id for p in report.problems) == sorted(p.id for p in dm.held_out_problems)
