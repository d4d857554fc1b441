"""The API sampler against the local fault-injecting server (tests/fault_server.py, 127.0.0.1 only)."""

from __future__ import annotations

import logging
import math
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

import pytest

from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.prompts import PromptTemplate, stop_strings
from egcfg_pl.replay.experience import p2value
from egcfg_pl.sampling.api import ApiSampler, ApiSettings, parse_choices, read_api_key, request_seed
from egcfg_pl.sampling.api_retry import ApiRequestError, RequestBudgetExceeded, RetryPolicy
from egcfg_pl.sampling.base import Sampler

from fault_server import TOKEN_LOGPROB, Fault, FaultServer, fake_tokens, program_text

SECRET = "sk-test-Zq81mXvT0pSecretValue"
KEY_ENV = "EGCFG_TEST_API_KEY"


def make_problems(count: int) -> list[Problem]:
    return [
        Problem(id=f"toy/{i}", source="custom", split="test", statement=f"Return a pair (task {i}).",
                tests=(TestCase(kind="assert", code="assert answer()"),), entry_point="answer")
        for i in range(count)
    ]


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


def make_settings(server: FaultServer, tmp_path: Path, **overrides) -> ApiSettings:
    fields = dict(model="fake-model", provider="custom", base_url=server.base_url, api_key_env=KEY_ENV, n=2,
                  backoff_base=0.01, backoff_max=0.05, timeout=2.0, cache_dir=str(tmp_path / "cache"))
    fields.update(overrides)
    return ApiSettings(**fields)


def cache_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache").rglob("*.json"))


# --- settings and keys -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value", [("n", 0), ("top_p", 0.0), ("concurrency", 0), ("timeout", 0), ("endpoint", "responses"),
                     ("request_budget", -1), ("provider", "anthropic")]
)
def test_bad_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ApiSettings.{field}"):
        ApiSettings(model="m", **{field: value})


def test_custom_provider_needs_base_url():
    with pytest.raises(ValueError, match="base_url"):
        ApiSettings(model="m", provider="custom")


def test_deepseek_preset_base_url_and_key_variable(monkeypatch):
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    settings = ApiSettings(model="deepseek-chat", provider="deepseek")
    assert settings.resolved_base_url == "https://api.deepseek.com"
    with pytest.raises(ValueError, match="DEEPSEEK_API_KEY"):
        ApiSampler(settings)


def test_missing_key_fails_before_any_request(tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV, raising=False)
    with FaultServer() as server:
        with pytest.raises(ValueError, match=KEY_ENV):
            ApiSampler(make_settings(server, tmp_path))
        assert server.requests == 0


def test_key_pasted_into_config_is_refused_without_echoing_it():
    settings = ApiSettings(model="m", provider="openai", api_key_env=SECRET)
    with pytest.raises(ValueError, match="environment variable") as error:
        read_api_key(settings)
    assert SECRET not in str(error.value)


def test_local_server_without_key(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with FaultServer() as server:
        sampler = ApiSampler(make_settings(server, tmp_path, api_key_env="none", n=1))
        assert len(sampler.sample(make_problems(1))) == 1


def test_key_never_in_logs_repr_or_cache(tmp_path, key_env, caplog):
    caplog.set_level(logging.DEBUG)  # includes the openai / httpx loggers
    with FaultServer(script=[Fault.status(429, echo_auth=True)]) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1))
        sampler.sample(make_problems(1))
        server.push(Fault.status(401, echo_auth=True))
        with pytest.raises(ApiRequestError) as error:
            sampler.sample(make_problems(2)[1:])
        assert server.auth_headers[0] == f"Bearer {SECRET}"  # the key was really used
    texts = [caplog.text, repr(sampler), repr(sampler.settings), "".join(traceback.format_exception(error.value))]
    texts += [p.read_text() for p in cache_files(tmp_path)]
    assert cache_files(tmp_path) and all(SECRET not in t for t in texts)
    assert "HTTP 401" in str(error.value) and "you sent Bearer <key>" in str(error.value)


# --- candidates and possibility -----------------------------------------------------------------------


def test_chat_logprobs_become_possibilities(tmp_path, key_env):
    with FaultServer() as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=3))
        assert isinstance(sampler, Sampler)
        candidates = sampler.sample(make_problems(2), iteration=1)
        body = server.bodies[0]
    assert server.requests == 2  # all n in one request per problem
    assert body["n"] == 3 and body["logprobs"] is True and body["top_logprobs"] == 1
    assert "stop" not in body  # a chat answer that opens with prose must not stop at its first fence
    assert [(c.problem_id, c.rank) for c in candidates] == [(f"toy/{i}", r) for i in range(2) for r in range(3)]
    for c in candidates:
        tokens = len(fake_tokens(c.text))
        assert c.num_tokens == tokens and c.logprob == pytest.approx(TOKEN_LOGPROB * tokens)
        assert 0 < c.possibility("raw") <= c.possibility("normalized") <= 1
        assert c.source == "custom:fake-model" and c.iteration == 1
        assert "def answer" in c.program and "```" not in c.program
    assert sampler.unknown_possibility == 0
    stats = sampler.last_stats
    assert (stats.problems, stats.candidates, stats.requests, stats.cache_hits) == (2, 6, 2, 0)
    assert stats.generated_tokens == sum(c.num_tokens for c in candidates)


def test_stop_strings_setting_is_sent_and_capped_for_openai(tmp_path, key_env, caplog):
    with FaultServer() as server:
        stops = ["\nA", "\nB", "\nC", "\nD", "\nE"]
        ApiSampler(make_settings(server, tmp_path, n=1, stop_strings=stops)).sample(make_problems(1))
        openai_like = make_settings(server, tmp_path, n=1, stop_strings=stops, provider="openai")
        ApiSampler(openai_like).sample(make_problems(1))
        assert server.bodies[0]["stop"] == stops and server.bodies[1]["stop"] == stops[:4]
    assert "at most 4 stop strings" in caplog.text


def test_template_style_must_match_the_endpoint(tmp_path, key_env):
    with FaultServer() as server:
        with pytest.raises(ValueError, match="endpoint = 'completions' needs a 'completion'-style"):
            ApiSampler(make_settings(server, tmp_path, endpoint="completions"), PromptTemplate(style="chat"))


def test_n_fallback_sends_further_requests_with_distinct_seeds(tmp_path, key_env, caplog):
    with FaultServer(max_choices=1) as server:  # imitates llama.cpp: `n` ignored
        sampler = ApiSampler(make_settings(server, tmp_path, n=3, seed=7, concurrency=1))
        candidates = sampler.sample(make_problems(2))
        seeds = [b["seed"] for b in server.bodies]
        asked = [b["n"] for b in server.bodies]
    assert server.requests == 6 and len(candidates) == 6
    per_problem = [request_seed(7, 0, (), k) for k in range(3)]
    assert seeds == per_problem * 2 and len(set(per_problem)) == 3 and asked == [3, 2, 1, 3, 2, 1]
    assert len({c.text for c in candidates[:3]}) == 3
    assert caplog.text.count("requested choices") == 1  # said once, not per request


def test_request_seeds_differ_per_iteration_stream_and_index(tmp_path, key_env):
    """`seed + iteration*n + index` ignored the stream (every chunk and rank of an iteration sent the same
    seeds) and repeated across base seeds and iterations (seed 0, iteration 1 = seed 2, iteration 0 with
    n = 2). Now every (seed, iteration, stream, request index) has its own seed, and the stream is part of
    the cache key (so a repeated stream hits the cache and a new one does not)."""
    problems = make_problems(1)
    draws = [(seed, iteration, stream) for seed in (0, 2) for iteration in (0, 1)
             for stream in ((0, 0), (0, 1), (1, 0))]
    with FaultServer(max_choices=1) as server:  # two requests per problem: indices 0 and 1
        for seed, iteration, stream in draws:
            ApiSampler(make_settings(server, tmp_path, seed=seed)).sample(problems, iteration=iteration, stream=stream)
        sent = server.requests
        seeds = [b["seed"] for b in server.bodies]
        ApiSampler(make_settings(server, tmp_path, seed=0)).sample(problems, iteration=1, stream=(1, 0))
        assert server.requests == sent  # a cache hit
    assert sent == 2 * len(draws) and len(set(seeds)) == len(seeds)
    assert all(0 <= s < 2**31 for s in seeds)  # servers read a 32-bit seed
    assert seeds[:2] == [request_seed(0, 0, (0, 0), k) for k in range(2)]
    keys = {(it, st, k) for it in range(3) for st in ((), (0,), (0, 0), (1,), (1, 0)) for k in range(3)}
    assert len({request_seed(5, *key) for key in keys}) == len(keys)  # (it, k) vs (it, k, 0): no zero padding


def test_unknown_possibility_is_none_and_counted(tmp_path, key_env, caplog):
    with FaultServer(with_logprobs=False) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=2))
        candidates = sampler.sample(make_problems(2))
        sampler.sample(make_problems(3)[2:])
    assert all(c.logprob is None and c.possibility() is None for c in candidates)
    assert sampler.unknown_possibility == 6
    assert caplog.text.count("unknown possibility") == 1
    assert p2value(candidates[0].possibility(), pass_rate=0.25, alpha=0.5) == 0.25  # falls back to pass_rate


def test_logprobs_off_does_not_ask_for_them(tmp_path, key_env):
    with FaultServer() as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, logprobs=False))
        (candidate,) = sampler.sample(make_problems(1))
        assert "logprobs" not in server.bodies[0] and "top_logprobs" not in server.bodies[0]
    assert candidate.logprob is None and sampler.unknown_possibility == 1


def test_completions_endpoint_uses_token_logprobs(tmp_path, key_env):
    with FaultServer() as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=2, endpoint="completions"))
        candidates = sampler.sample(make_problems(1))
        body = server.bodies[0]
    assert isinstance(body["prompt"], str) and "task 0" in body["prompt"] and body["logprobs"] == 1
    assert body["stop"] == stop_strings(sampler.template, make_problems(1)[0])  # the template's stops
    tokens = len(fake_tokens(program_text(0, 0)))
    assert candidates[0].num_tokens == tokens and candidates[0].logprob == pytest.approx(TOKEN_LOGPROB * tokens)


@pytest.mark.parametrize(
    "choice, expected",
    [
        ({"message": {"content": "x"}, "logprobs": None}, (None, 0)),
        ({"message": {"content": "x"}, "logprobs": {"content": []}}, (None, 0)),
        ({"message": {"content": "x"}, "logprobs": {"content": [{"logprob": -1.0}, {"logprob": math.nan}]}}, (None, 0)),
        ({"message": {"content": "x"}, "logprobs": {"content": [{"logprob": -1.0}, {"logprob": -0.5}]}}, (-1.5, 2)),
    ],
)
def test_parse_choices_never_invents_a_possibility(choice, expected):
    (completion,) = parse_choices({"choices": [choice]}, "chat")
    assert (completion.logprob, completion.num_tokens) == expected and completion.text == "x"


# --- retries and errors -------------------------------------------------------------------------------


def test_retries_every_transient_fault_then_succeeds(tmp_path, key_env, caplog):
    script = [Fault.status(429, retry_after="1"), Fault.status(503), Fault.drop(), Fault.slow(1.5),
              Fault.malformed(), Fault.status(429)]
    with FaultServer(script=script) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, timeout=0.5, max_retries=6))
        start = time.monotonic()
        (candidate,) = sampler.sample(make_problems(1))
        elapsed = time.monotonic() - start
    assert server.requests == 7 and sampler.requests_sent == 7
    assert candidate.logprob is not None
    assert elapsed >= 1.0 + 0.5  # honoured Retry-After (backoff alone is <= 0.05 s) and waited out the timeout
    for text in ("HTTP 429", "HTTP 503", "connection failed", "timed out", "malformed JSON"):
        assert text in caplog.text


def test_retries_exhausted_names_the_status(tmp_path, key_env):
    with FaultServer(script=[Fault.status(500)] * 3) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, max_retries=2))
        with pytest.raises(ApiRequestError, match="after 3 attempts; last error: HTTP 500") as error:
            sampler.sample(make_problems(1))
        assert server.requests == 3
    assert error.value.status_code == 500 and "toy/0" in str(error.value)


def test_non_retryable_error_fails_at_once(tmp_path, key_env):
    with FaultServer(script=[Fault.status(400)]) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1))
        with pytest.raises(ApiRequestError, match="HTTP 400.*not retried"):
            sampler.sample(make_problems(1))
        assert server.requests == 1


def test_a_response_without_choices_is_an_error_and_not_cached(tmp_path, key_env):
    with FaultServer(script=[Fault.empty()]) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1))
        with pytest.raises(ApiRequestError, match="returned no choices"):
            sampler.sample(make_problems(1))
        assert cache_files(tmp_path) == []
        assert len(sampler.sample(make_problems(1))) == 1 and server.requests == 2  # a rerun asks again


def test_backoff_is_exponential_capped_jittered_and_respects_retry_after():
    policy = RetryPolicy(max_retries=5, backoff_base=1.0, backoff_max=5.0)
    for retry, cap in [(0, 1.0), (1, 2.0), (2, 4.0), (3, 5.0), (6, 5.0)]:
        pauses = [policy.backoff(retry, None) for _ in range(200)]
        assert all(0 <= p <= cap for p in pauses) and max(pauses) > cap / 2  # jittered over [0, cap]
    assert policy.backoff(0, retry_after=7.0) == 7.0


# --- concurrency, budget, cache -----------------------------------------------------------------------


def test_concurrency_is_bounded(tmp_path, key_env):
    with FaultServer(script=[Fault.slow(0.3)] * 6) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, concurrency=2))
        candidates = sampler.sample(make_problems(6))
    assert len(candidates) == 6 and server.max_in_flight == 2


def test_a_failure_stops_new_requests_and_is_raised(tmp_path, key_env):
    with FaultServer(script=[Fault.status(400)] + [Fault.slow(0.3)] * 5) as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, concurrency=2))
        with pytest.raises(ApiRequestError, match="HTTP 400"):
            sampler.sample(make_problems(6))
        sent = server.requests
    assert sent <= 2  # the failed request and at most the one in flight beside it; none after the failure
    assert len(cache_files(tmp_path)) == sent - 1  # a response in flight was waited for and kept


def test_budget_stops_the_run_after_saving_what_was_paid_for(tmp_path, key_env):
    problems = make_problems(4)
    with FaultServer() as server:
        sampler = ApiSampler(make_settings(server, tmp_path, n=1, concurrency=1, request_budget=2))
        with pytest.raises(RequestBudgetExceeded, match="request_budget=2"):
            sampler.sample(problems)
        assert server.requests == 2 and len(cache_files(tmp_path)) == 2
        resumed = ApiSampler(make_settings(server, tmp_path, n=1, concurrency=1))
        candidates = resumed.sample(problems)
    assert server.requests == 4  # the resumed run paid only for the two missing responses
    assert resumed.cache_hits == 2 and len(candidates) == 4


def test_cache_hit_sends_no_request_and_returns_the_same_candidates(tmp_path, key_env):
    problems = make_problems(3)
    with FaultServer(max_choices=1) as server:
        first = ApiSampler(make_settings(server, tmp_path, n=2)).sample(problems)
        sent = server.requests
        again = ApiSampler(make_settings(server, tmp_path, n=2))
        second = again.sample(problems)
        assert server.requests == sent == 6 and again.requests_sent == 0 and again.cache_hits == 6
        again.sample(problems, iteration=1)  # a new iteration samples afresh
        assert server.requests == 12
        ApiSampler(make_settings(server, tmp_path, n=2, temperature=0.2)).sample(problems[:1])
        assert server.requests == 14  # changed parameters are a different cache key
    assert first == second
    assert all(p.suffix == ".json" for p in cache_files(tmp_path)) and len(cache_files(tmp_path)) == 14


CTRL_C_SCRIPT = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.api import ApiSampler, ApiSettings
settings = ApiSettings(model="fake-model", provider="custom", base_url=sys.argv[1], api_key_env="none", n=1,
                       concurrency=1, cache_dir=sys.argv[2])
problems = [Problem(id=f"toy/{i}", source="custom", split="test", statement=f"task {i}", tests=(), entry_point="f")
            for i in range(8)]
ApiSampler(settings).sample(problems)
"""


def test_ctrl_c_keeps_every_response_already_received(tmp_path):
    with FaultServer(script=[Fault.slow(0.4)] * 8) as server:
        run = subprocess.Popen([sys.executable, "-c", CTRL_C_SCRIPT, server.base_url, str(tmp_path / "cache")],
                               stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while server.requests < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        run.send_signal(signal.SIGINT)  # while request 3 is in flight
        _, stderr = run.communicate(timeout=60)
        assert "KeyboardInterrupt" in stderr
        paid = server.requests
        assert 3 <= paid < 8 and len(cache_files(tmp_path)) == paid  # the in-flight response was kept too
