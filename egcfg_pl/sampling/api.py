"""Candidates from any OpenAI-compatible API: OpenAI, DeepSeek, a local vLLM or llama.cpp server.

The BTP source model can be a strong API model (big-to-small: GPT-4 samples teach a small local target,
paper §4). Each problem gets ``n`` sampled programs; their possibility P(t) = Π p(token) comes from the
token log-probs the server returns (``Candidate.logprob`` = Σ log p, ``num_tokens`` = their count), over the
program's tokens only where the returned tokens spell the reply (else the whole reply, prose and fences
included; ``Candidate.logprob_scope`` says which). ``finish_reason == "length"`` marks a candidate truncated. A
server that returns no log-probs gives ``logprob=None``: the possibility is unknown, P2Value falls back to
the pass rate, ``unknown_possibility`` counts such candidates and a warning is logged once.

Pointing it at a server (the key is read from the environment only, never from a config file):

- OpenAI: ``provider: openai``, ``model: gpt-4o-mini``; export ``OPENAI_API_KEY``.
- DeepSeek: ``provider: deepseek``, ``model: deepseek-chat``; export ``DEEPSEEK_API_KEY``
  (base URL preset to https://api.deepseek.com).
- vLLM: ``provider: custom``, ``base_url: http://127.0.0.1:8000/v1``, ``model:`` the served model name,
  ``api_key_env: none`` (or the variable holding the key given to ``vllm serve --api-key``).
- llama.cpp (``python -m llama_cpp.server --model x.gguf``): as vLLM with port 8000; it ignores ``n``
  (the sampler notices and sends further requests), and returns chat log-probs only with
  ``top_logprobs`` set, which the sampler does.

Robustness lives in two small modules: ``api_retry`` (backoff, budget, clear final errors) and
``api_cache`` (every response on disk as it arrives, so a rerun pays for nothing twice).
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Any, Literal

from egcfg_pl.problems.problem import Problem
from egcfg_pl.prompts import (
    PromptTemplate,
    build_messages,
    build_prompt,
    extract_program,
    program_span,
    stop_strings,
)
from egcfg_pl.sampling.api_cache import ResponseCache
from egcfg_pl.sampling.api_retry import ApiRequestError, RequestBudget, RetryPolicy, call_with_retries
from egcfg_pl.sampling.base import derive_seed
from egcfg_pl.sampling.candidate import Candidate, LogprobScope

log = logging.getLogger(__name__)

Provider = Literal["openai", "deepseek", "custom"]
Endpoint = Literal["chat", "completions"]
PRESET_BASE_URL = {"openai": "https://api.openai.com/v1", "deepseek": "https://api.deepseek.com"}
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "deepseek": "DEEPSEEK_API_KEY"}
NO_KEY_SETTINGS = ("none", "")  # api_key_env values meaning "this server needs no key"
TEMPLATE_STYLE = {"chat": "chat", "completions": "completion"}  # the prompt style each endpoint takes
OPENAI_MAX_STOP = 4  # OpenAI rejects requests with more stop strings
NO_KEY_PLACEHOLDER = "no-key"  # sent to servers without authentication (the client insists on some key)
_Draw = tuple[int, tuple[int, ...]]  # (iteration, stream): which random draw a request belongs to


def request_seed(seed: int, iteration: int, stream: Sequence[int], index: int) -> int:
    """The seed of request ``index`` (per problem; the prompt tells problems apart) of ``iteration`` in
    ``stream``: ``derive_seed`` over all of them (it counts its parts, so streams of different lengths never
    collide through SeedSequence's zero padding), folded to 31 bits because
    servers read it as a 32-bit integer (llama.cpp: uint32, where 0xFFFFFFFF means "random").
    ``seed + iteration·n + index`` ignored the stream (every chunk and rank of an iteration sent the same
    seeds) and collided across base seeds (seed 0, iteration 1 = seed n, iteration 0)."""
    return derive_seed(seed, iteration, *stream, index) & 0x7FFFFFFF


@dataclass
class ApiSettings:
    """Where and how to sample candidates from an OpenAI-compatible API."""

    model: str
    """Model name: ``gpt-4o-mini``, ``deepseek-chat``, or the name a local server serves."""
    provider: Provider = "openai"
    """``openai``, ``deepseek`` (presets base URL and key variable) or ``custom`` (set ``base_url``)."""
    base_url: str | None = None
    """Base URL of any OpenAI-compatible server, e.g. ``http://127.0.0.1:8000/v1``; overrides the preset."""
    api_key_env: str | None = None
    """Name of the environment variable holding the key (default OPENAI_API_KEY / DEEPSEEK_API_KEY);
    ``none`` for a server without authentication. Never the key itself."""
    endpoint: Endpoint = "chat"
    """``chat`` (/chat/completions) or ``completions`` (legacy /completions, returns token_logprobs)."""
    n: int = 5
    """Candidates per problem (sent as ``n``; servers that ignore it get further requests)."""
    temperature: float = 0.8
    """Sampling temperature."""
    top_p: float = 0.95
    """Nucleus sampling mass."""
    max_tokens: int = 512
    """Most tokens generated per candidate."""
    stop_strings: list[str] | None = None
    """Strings that end a candidate. ``None``: the prompt template's on the completions endpoint, none on chat
    (chat models end their turn themselves, and a fence stop would cut an answer that opens with prose at its
    first fence); ``[]``: none."""
    logprobs: bool = True
    """Ask for token log-probs (the possibility). Off, or unsupported: possibility unknown, P2Value = pass rate."""
    concurrency: int = 4
    """Problems requested in parallel."""
    max_retries: int = 5
    """Retries per request on 429 / 5xx / timeouts / dropped connections (exponential backoff, jitter)."""
    backoff_base: float = 1.0
    """Seconds before the first retry (doubles each retry, full jitter); a Retry-After header wins."""
    backoff_max: float = 30.0
    """Cap on one backoff pause, seconds."""
    timeout: float = 60.0
    """Seconds one request may take before it counts as timed out (and is retried)."""
    request_budget: int | None = None
    """Most requests this run may send (retries count; cache hits do not); null = no limit."""
    cache_dir: str | None = "checkpoints/api_cache"
    """Folder for the response cache (one JSON file per response); null disables it."""
    seed: int | None = 0
    """Base sampling seed; request k of iteration i in stream s (the refresh's (rank, chunk)) sends
    ``request_seed(seed, i, s, k)``, distinct for every (i, s, k). null: no seed."""

    def __post_init__(self) -> None:
        checks = [
            (bool(self.model), "model", "name the model, e.g. gpt-4o-mini"),
            (self.provider in ("openai", "deepseek", "custom"), "provider", "use openai, deepseek or custom"),
            (self.provider != "custom" or bool(self.base_url), "base_url", "provider custom needs a base_url"),
            (self.endpoint in ("chat", "completions"), "endpoint", "use chat or completions"),
            (self.n >= 1, "n", "ask for at least 1 candidate"),
            (self.temperature >= 0, "temperature", "use a value >= 0"),
            (0 < self.top_p <= 1, "top_p", "use a value in (0, 1]"),
            (self.max_tokens >= 1, "max_tokens", "use a value >= 1"),
            (self.concurrency >= 1, "concurrency", "use a value >= 1"),
            (self.max_retries >= 0, "max_retries", "use a value >= 0"),
            (self.backoff_base >= 0 and self.backoff_max >= 0, "backoff_base/backoff_max", "use values >= 0"),
            (self.timeout > 0, "timeout", "use a value > 0 seconds"),
            (self.request_budget is None or self.request_budget >= 0, "request_budget", "use >= 0 or null"),
        ]
        for ok, name, fix in checks:
            if not ok:
                raise ValueError(f"ApiSettings.{name} = {getattr(self, name, '?')!r} is invalid: {fix}")

    @property
    def resolved_base_url(self) -> str:
        return (self.base_url or PRESET_BASE_URL[self.provider]).rstrip("/")


def read_api_key(settings: ApiSettings) -> str | None:
    """The key from the environment variable the settings name (None for ``api_key_env: none``).

    Raises before any request is sent when the variable is unset, naming the variable (never a value).
    """
    env = settings.api_key_env if settings.api_key_env is not None else DEFAULT_KEY_ENV.get(settings.provider)
    if env is None:
        raise ValueError("ApiSettings.api_key_env is not set: provider custom has no default key variable; name "
                         "the environment variable holding the key, or use `none` for a server without auth")
    if env.strip().lower() in NO_KEY_SETTINGS:
        return None
    if not env.isidentifier():  # e.g. a pasted key; do not echo it
        raise ValueError("ApiSettings.api_key_env must name an environment variable (like OPENAI_API_KEY), "
                         "not hold the key itself: keys are read from the environment only")
    key = os.environ.get(env, "").strip()
    if not key:
        raise ValueError(f"environment variable {env} is not set or empty: export {env}=<your {settings.provider} "
                         "key> (keys are read from the environment only, never from config files), or set "
                         "api_key_env: none for a local server without authentication")
    return key


def import_openai() -> Any:
    """The ``openai`` client library: the optional ``api`` extra, imported only when an API sampler is built."""
    try:
        import openai
    except ImportError as error:
        raise ImportError("the API samplers (model.api, ReplayRefresh.source_api) need the openai package: "
                          "pip install 'egcfg_pl[api]' (or pip install openai)") from error
    return openai


def template_for(endpoint: Endpoint, template: PromptTemplate | None) -> PromptTemplate:
    """The prompt template, checked against the endpoint: chat takes messages, completions plain text."""
    style = TEMPLATE_STYLE[endpoint]
    if template is None:
        template = PromptTemplate(style=style)
    if template.style != style:
        raise ValueError(f"ApiSettings.endpoint = {endpoint!r} needs a {style!r}-style prompt template, got "
                         f"style {template.style!r}: change one of the two")
    return replace(template, response_prefix="")  # a chat API cannot prefill the assistant's turn


@dataclass(frozen=True)
class Completion:
    """One returned choice: its text, Σ token log-probs (None when not returned) and token count; the tokens'
    bytes and log-probs (to sum over the program's tokens only), and whether it ran out of ``max_tokens``."""

    text: str
    logprob: float | None
    num_tokens: int
    truncated: bool = False  # finish_reason == "length": cut off by the token budget
    tokens: tuple[bytes, ...] | None = None  # the returned tokens, when the server named them
    token_logprobs: tuple[float, ...] | None = None

    def program_logprob(self, span: tuple[int, int]) -> tuple[float | None, int, LogprobScope]:
        """``(Σ log p, tokens, scope)`` over the tokens overlapping ``span`` (characters of ``text``) when the
        returned tokens spell ``text`` (scope ``program``); else the whole reply's (scope ``reply``)."""
        offsets = self._token_offsets()
        if offsets is None or self.token_logprobs is None:
            return self.logprob, self.num_tokens, "reply"
        start, end = (len(self.text[:i].encode()) for i in span)  # characters -> UTF-8 bytes
        inside = [lp for (a, b), lp in zip(offsets, self.token_logprobs) if a < end and b > start]
        if not inside:  # no code in the reply: nothing narrower to score
            return self.logprob, self.num_tokens, "reply"
        return math.fsum(inside), len(inside), "program"

    def _token_offsets(self) -> list[tuple[int, int]] | None:
        """Byte range of each token in ``text``, or None when the tokens do not spell it (then no alignment)."""
        if not self.tokens or not b"".join(self.tokens).startswith(self.text.encode()):
            return None
        ends = list(itertools.accumulate(len(t) for t in self.tokens))
        return [(end - len(t), end) for t, end in zip(self.tokens, ends)]


def token_logprobs(choice: dict[str, Any], endpoint: Endpoint) -> list[float] | None:
    """The sampled tokens' log-probs of one choice, or None when the server returned none (or junk)."""
    logprobs = choice.get("logprobs") or {}
    if endpoint == "chat":
        values = [item.get("logprob") for item in logprobs.get("content") or []]
    else:
        values = list(logprobs.get("token_logprobs") or [])
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return [float(v) for v in values]


def token_bytes(choice: dict[str, Any], endpoint: Endpoint) -> tuple[bytes, ...] | None:
    """The sampled tokens of one choice as bytes (chat: each item's ``bytes``, else its ``token``; completions:
    ``logprobs.tokens``), or None when the server named none."""
    logprobs = choice.get("logprobs") or {}
    if endpoint == "chat":
        items = logprobs.get("content") or []
        tokens = [bytes(i["bytes"]) if isinstance(i.get("bytes"), list) else i.get("token") for i in items]
    else:
        tokens = list(logprobs.get("tokens") or [])
    if not tokens or any(t is None for t in tokens):
        return None
    return tuple(t if isinstance(t, bytes) else str(t).encode() for t in tokens)


def parse_choices(response: dict[str, Any], endpoint: Endpoint) -> list[Completion]:
    """Response JSON (chat or legacy completions) → one ``Completion`` per choice, in index order."""
    out = []
    for choice in sorted(response.get("choices") or [], key=lambda c: c.get("index", 0)):
        text = (choice.get("message") or {}).get("content") if endpoint == "chat" else choice.get("text")
        values = token_logprobs(choice, endpoint)
        logprob = None if values is None else math.fsum(values)
        tokens = token_bytes(choice, endpoint) if values is not None else None
        out.append(Completion(
            text or "", logprob, 0 if values is None else len(values),
            truncated=choice.get("finish_reason") == "length",
            tokens=tokens if tokens is not None and len(tokens) == len(values or ()) else None,
            token_logprobs=None if values is None else tuple(values),
        ))
    return out


@dataclass
class ApiSamplingStats:
    """What one ``sample`` call did; ``unknown_possibility`` counts candidates returned without log-probs."""

    problems: int = 0
    candidates: int = 0
    generated_tokens: int = 0  # tokens the candidates' log-probs cover (Candidate.num_tokens; unknown count 0)
    seconds: float = 0.0
    requests: int = 0  # sent, retries included
    cache_hits: int = 0
    unknown_possibility: int = 0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0

    def __str__(self) -> str:
        return (f"{self.candidates} candidates for {self.problems} problems in {self.seconds:.1f}s "
                f"({self.requests} requests sent, {self.cache_hits} cache hits, {self.unknown_possibility} "
                "without log-probs)")


class _Cancelled(Exception):
    """Another problem failed (or Ctrl-C): stop before the next request."""


class ApiSampler:
    """A ``Sampler`` over an OpenAI-compatible API: ``n`` candidates per problem, in request order."""

    def __init__(self, settings: ApiSettings, template: PromptTemplate | None = None) -> None:
        self.settings = settings
        self.template = template_for(settings.endpoint, template)
        self.name = f"{settings.provider}:{settings.model}"
        key = read_api_key(settings)  # fails before any request is sent
        self._client = import_openai().OpenAI(
            api_key=key or NO_KEY_PLACEHOLDER,
            base_url=settings.resolved_base_url,
            timeout=settings.timeout,
            max_retries=0,  # our loop retries (api_retry), counting every attempt against the budget
        )
        self._retry = RetryPolicy(settings.max_retries, settings.backoff_base, settings.backoff_max)
        self.budget = RequestBudget(settings.request_budget)
        self.cache = ResponseCache(settings.cache_dir)
        self.cache_hits = 0
        self.unknown_possibility = 0  # candidates without log-probs so far (P2Value used pass_rate alone)
        self.last_stats = ApiSamplingStats()
        self._lock = threading.Lock()
        self._warned: set[str] = set()
        self._stop = threading.Event()

    def __repr__(self) -> str:  # never shows the client (it holds the key)
        return f"ApiSampler(name={self.name!r}, base_url={self.settings.resolved_base_url!r})"

    @property
    def requests_sent(self) -> int:
        return self.budget.used

    def sample(
        self, problems: Sequence[Problem], *, iteration: int = 0, stream: Sequence[int] = ()
    ) -> list[Candidate]:
        """``n`` candidates per problem, grouped by problem in input order (rank = request order).

        ``stream`` names the random stream beside the iteration (the refresh passes ``(rank, chunk)``): request
        ``k`` of a problem sends the seed ``request_seed(seed, iteration, stream, k)``, so no two (iteration,
        stream, k) share a seed (the prompt differs per problem); the stream is part of the cache key too."""
        start, sent, hits = time.perf_counter(), self.requests_sent, self.cache_hits
        key = (iteration, tuple(int(x) for x in stream))
        candidates = [c for group in self._sample_all(problems, key) for c in group]
        self._count_unknown(candidates)
        self.last_stats = ApiSamplingStats(
            problems=len(problems), candidates=len(candidates), generated_tokens=sum(c.num_tokens for c in candidates),
            seconds=time.perf_counter() - start, requests=self.requests_sent - sent, cache_hits=self.cache_hits - hits,
            unknown_possibility=sum(c.logprob is None for c in candidates))
        log.info("%s: %s", self.name, self.last_stats)
        return candidates

    def _sample_all(self, problems: Sequence[Problem], key: _Draw) -> list[list[Candidate]]:
        """Problems in parallel (``concurrency`` at a time). On the first failure (or Ctrl-C) nothing new
        is sent; requests in flight finish and are cached; then the failure is raised."""
        if not problems:
            return []
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=min(self.settings.concurrency, len(problems)))
        try:
            futures = [pool.submit(self._sample_problem_or_stop, p, key) for p in problems]
            wait(futures, return_when=FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if errors:
                raise errors[0]
            return [f.result() for f in futures]
        except BaseException:
            self._stop.set()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)

    def _sample_problem_or_stop(self, problem: Problem, key: _Draw) -> list[Candidate]:
        try:
            return self._sample_problem(problem, key)
        except BaseException:
            self._stop.set()  # before this worker takes the next problem
            raise

    def _sample_problem(self, problem: Problem, key: _Draw) -> list[Candidate]:
        """Ask for all ``n`` in one request; if fewer come back, ask again for the rest (new seed).
        ``key`` is (iteration, stream)."""
        n, completions, index, iteration = self.settings.n, [], 0, key[0]
        while len(completions) < n:
            need = n - len(completions)
            got = parse_choices(self._fetch(problem, key, index, need), self.settings.endpoint)
            if len(got) < need:
                self._warn_once("n", "%s returned %d of %d requested choices (the server ignores `n`?); "
                                "sending further requests for the rest", self.name, len(got), need)
            completions.extend(got[:need])
            index += 1
        return [self._candidate(problem, c, iteration, rank) for rank, c in enumerate(completions)]

    def _candidate(self, problem: Problem, c: Completion, iteration: int, rank: int) -> Candidate:
        """The program and, where the returned tokens allow, the possibility of its tokens only (not the prose
        and fences around it); ``truncated`` when the reply ran out of ``max_tokens``."""
        program = extract_program(c.text, problem, self.template)
        logprob, num_tokens, scope = c.program_logprob(program_span(c.text, problem, self.template))
        return Candidate(problem.id, program, c.text, logprob, num_tokens, self.name, iteration, rank,
                         truncated=c.truncated, logprob_scope=scope)

    def _fetch(self, problem: Problem, key: _Draw, index: int, need: int) -> dict[str, Any]:
        """The response to request ``index`` for ``problem``: from the cache, else sent (and cached)."""
        request = self._request(problem, key, index, need)
        cached = self.cache.get(request)
        if cached is not None:
            with self._lock:
                self.cache_hits += 1
            return cached
        if self._stop.is_set():
            raise _Cancelled()
        what = f"{self.name} {self.settings.endpoint} request {index} for {problem.id}"
        response = call_with_retries(lambda: self._send(request), self._retry, self.budget, what, self._pause,
                                     self._redact)
        if not response.get("choices"):  # not cached: a rerun asks again
            raise ApiRequestError(f"{what} returned no choices: {self._redact(str(response))[:300]}")
        self.cache.put(request, response)  # at once: a crash after this loses nothing paid for
        return response

    def _redact(self, text: str) -> str:
        key = self._client.api_key
        return text.replace(key, "<key>") if key and key != NO_KEY_PLACEHOLDER else text

    def _pause(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Cancelled()

    def _request(self, problem: Problem, key: _Draw, index: int, need: int) -> dict[str, Any]:
        """Everything that determines the response (JSON-native): the cache key and the call's arguments."""
        s, (iteration, stream) = self.settings, key
        params: dict[str, Any] = {"n": need, "temperature": s.temperature, "top_p": s.top_p,
                                  "max_tokens": s.max_tokens}
        stop = self._stop_strings(problem)
        if s.provider == "openai" and len(stop) > OPENAI_MAX_STOP:
            self._warn_once("stop", "OpenAI takes at most %d stop strings; sending %s, not %s", OPENAI_MAX_STOP,
                            stop[:OPENAI_MAX_STOP], stop)
            stop = stop[:OPENAI_MAX_STOP]
        if stop:
            params["stop"] = stop
        if s.seed is not None:
            params["seed"] = request_seed(s.seed, iteration, stream, index)
        if s.logprobs:  # chat: llama.cpp returns content log-probs only with top_logprobs set too
            params.update({"logprobs": True, "top_logprobs": 1} if s.endpoint == "chat" else {"logprobs": 1})
        text_input = build_messages(problem, self.template) if s.endpoint == "chat" else self._prompt(problem)
        return {"base_url": s.resolved_base_url, "model": s.model, "endpoint": s.endpoint, "input": text_input,
                "params": params, "iteration": iteration, "stream": list(stream), "index": index}

    def _stop_strings(self, problem: Problem) -> list[str]:
        if self.settings.stop_strings is not None:
            return list(self.settings.stop_strings)
        return stop_strings(self.template, problem) if self.settings.endpoint == "completions" else []

    def _prompt(self, problem: Problem) -> str:
        """The legacy endpoint's plain text to continue (a completion-style template)."""
        return build_prompt(problem, template=self.template)

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        if self.settings.endpoint == "chat":
            create, key = self._client.chat.completions.create, "messages"
        else:
            create, key = self._client.completions.create, "prompt"
        response = create(model=request["model"], **{key: request["input"]}, **request["params"])
        return response.model_dump(mode="json")

    def _count_unknown(self, candidates: list[Candidate]) -> None:
        unknown = sum(c.logprob is None for c in candidates)
        self.unknown_possibility += unknown
        if unknown:
            why = "logprobs is off" if not self.settings.logprobs else "the server returned no token log-probs"
            self._warn_once("logprobs", "%s: %d of %d candidates have an unknown possibility (%s); their "
                            "P2Value falls back to pass_rate", self.name, unknown, len(candidates), why)

    def _warn_once(self, topic: str, message: str, *args: Any) -> None:
        with self._lock:
            if topic in self._warned:
                return
            self._warned.add(topic)
        log.warning(message, *args)
