"""One sampler factory: ``build_sampler`` makes the API, source-model and live-weights samplers."""

from __future__ import annotations

import pytest

from egcfg_pl.models import ModelSpec
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.sampling.api import ApiSampler, ApiSettings
from egcfg_pl.sampling.beam import HFSampler
from egcfg_pl.sampling.factory import build_sampler
from egcfg_pl.sampling.settings import GenerationSettings

GREEDY = GenerationSettings(strategy="greedy", num_beams=1, num_return_sequences=1, max_new_tokens=4, progress=False)


def test_build_sampler_makes_each_kind(tiny_model_dir):
    template = PromptTemplate()
    api = ApiSettings(provider="custom", base_url="http://127.0.0.1:9/v1", model="m", api_key_env="none")
    assert isinstance(build_sampler(GREEDY, template, api=api), ApiSampler)
    source = build_sampler(GREEDY, template, source=ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu"))
    assert isinstance(source, HFSampler) and source.name == str(tiny_model_dir) and source.settings == GREEDY
    live = build_sampler(GREEDY, template, model=source.model, tokenizer=source.tokenizer, name="target")
    assert live.model is source.model and live.name == "target"
    with pytest.raises(ValueError, match="give api, source, or model and tokenizer"):
        build_sampler(GREEDY, template)
