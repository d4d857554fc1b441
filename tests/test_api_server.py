"""The API sampler against a real OpenAI-compatible server: llama-cpp-python serving the embedded SmolLM2
GGUF on 127.0.0.1 (started by the fixture). Skipped, with the build failure as the reason, only when the
server package could not be built or imported."""

from __future__ import annotations

import math
import sys

import pytest

from conftest import embedded_gguf
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sampling.api import ApiSampler, ApiSettings

import llama_server as llama_server_module
from llama_server import LlamaServer, unavailable_reason

PROBLEMS = [
    Problem(id="toy/add", source="custom", split="test", statement="Write a function add(a, b) that returns a + b.",
            tests=(TestCase(kind="assert", code="assert add(1, 2) == 3", public=True),), entry_point="add"),
    Problem(id="toy/rev", source="custom", split="test", statement="Write a function rev(s) that reverses a string.",
            tests=(TestCase(kind="assert", code="assert rev('ab') == 'ba'", public=True),), entry_point="rev"),
]


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    server = LlamaServer(embedded_gguf(), tmp_path_factory.mktemp("llama_server") / "server.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


def settings_for(server: LlamaServer, tmp_path, **overrides) -> ApiSettings:
    fields = dict(model=server.alias, provider="custom", base_url=server.base_url, api_key_env="none", n=2,
                  max_tokens=40, concurrency=2, timeout=120.0, cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return ApiSettings(**fields)


def assert_real_possibilities(candidates) -> None:
    for c in candidates:
        assert c.logprob is not None and math.isfinite(c.logprob) and c.logprob < 0, c
        assert c.num_tokens > 0 and c.text
        assert 0 < c.possibility("raw") <= c.possibility("normalized") <= 1


@pytest.mark.server
@pytest.mark.slow
def test_chat_logprobs_become_possibilities_and_n_is_filled(llama_server, tmp_path):
    sampler = ApiSampler(settings_for(llama_server, tmp_path, n=2))
    candidates = sampler.sample(PROBLEMS)
    assert [(c.problem_id, c.rank) for c in candidates] == [(p.id, r) for p in PROBLEMS for r in range(2)]
    assert_real_possibilities(candidates)
    assert sampler.unknown_possibility == 0
    # llama.cpp ignores `n`: one choice per request, so the sampler sent one request per candidate
    assert sampler.requests_sent in (len(PROBLEMS), 2 * len(PROBLEMS))
    rerun = ApiSampler(settings_for(llama_server, tmp_path, n=2))
    assert rerun.sample(PROBLEMS) == candidates and rerun.requests_sent == 0  # served from the cache


@pytest.mark.server
@pytest.mark.slow
def test_completions_endpoint_token_logprobs(llama_server, tmp_path):
    sampler = ApiSampler(settings_for(llama_server, tmp_path, n=1, endpoint="completions"))
    candidates = sampler.sample(PROBLEMS[:1])
    assert len(candidates) == 1
    assert_real_possibilities(candidates)


def test_skip_reason_reports_the_recorded_build_failure(tmp_path, monkeypatch):
    fake_python = tmp_path / "python"
    fake_python.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'llama_cpp'\" >&2\nexit 1\n")
    fake_python.chmod(0o755)
    stamp = tmp_path / ".llama-server"
    stamp.write_text("pip install failed (log: x.log): error: no C compiler\n")
    monkeypatch.setattr(sys, "executable", str(fake_python))
    monkeypatch.setattr(llama_server_module, "STAMP", stamp)
    reason = unavailable_reason()
    assert "No module named 'llama_cpp'" in reason and "error: no C compiler" in reason
