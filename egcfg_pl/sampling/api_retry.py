"""Our retry loop for API calls: exponential backoff with jitter, ``Retry-After`` honoured.

The ``openai`` client's own retries are switched off (``max_retries=0``) so that this loop is the one
place that decides, counts every attempt against the request budget, and names the final failure.

Retried: HTTP 408 / 409 / 429 / 5xx, timeouts, dropped connections, and a 200 whose body is not valid
JSON (a proxy hiccup). Any other 4xx (bad request, wrong key, unknown model) fails at once: asking again
cannot fix it.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

RETRYABLE_STATUS = frozenset({408, 409, 429})
MAX_RETRY_AFTER = 600.0  # a server asking for a longer pause than this is not worth waiting for


class ApiRequestError(RuntimeError):
    """A request failed for good: a non-retryable status, or retries exhausted."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RequestBudgetExceeded(RuntimeError):
    """The run's ``request_budget`` is spent; responses already received are in the cache."""


class RequestBudget:
    """Counts requests sent (every attempt, retries included) against an optional per-run limit."""

    def __init__(self, limit: int | None) -> None:
        if limit is not None and limit < 0:
            raise ValueError(f"request_budget must be >= 0 or null (no limit), got {limit}")
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self) -> None:
        with self._lock:
            if self.limit is not None and self.used >= self.limit:
                raise RequestBudgetExceeded(
                    f"request_budget={self.limit} is spent ({self.used} requests sent); responses already "
                    "received are cached, so a rerun with a larger request_budget resumes without paying twice"
                )
            self.used += 1


@dataclass(frozen=True)
class RetryPolicy:
    max_retries: int = 5  # attempts = 1 + max_retries
    backoff_base: float = 1.0  # seconds before the first retry (before jitter)
    backoff_max: float = 30.0  # cap on one backoff pause

    def backoff(self, retry: int, retry_after: float | None) -> float:
        """Pause before retry number ``retry`` (0-based): the server's ``Retry-After`` when it sent one,
        else full jitter: uniform(0, min(backoff_max, backoff_base · 2^retry))."""
        if retry_after is not None:
            return min(retry_after, MAX_RETRY_AFTER)
        return random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2**retry))


def retry_after_seconds(error: BaseException) -> float | None:
    """``retry-after-ms`` or ``retry-after`` (seconds) from an HTTP error's response, if present."""
    response = getattr(error, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP-date Retry-After: fall back to our own backoff
    return None


def _openai() -> Any:
    import openai  # only reached after an ApiSampler was built, which imported it (the optional api extra)

    return openai


def connection_refused(error: BaseException) -> bool:
    """Nothing listens at the server's address (a wrong base_url or a server not started): fail, do not retry."""
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, ConnectionRefusedError) or "connection refused" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def describe(error: BaseException) -> tuple[str, int | None]:
    """A short human description of a failed attempt and its HTTP status (None if there was none)."""
    openai = _openai()
    if isinstance(error, openai.APIConnectionError) and connection_refused(error):
        url = getattr(getattr(error, "request", None), "url", "the server")
        return (f"connection refused: nothing is listening at {url}; start the server or fix base_url "
                "(ApiSettings.base_url)"), None
    if isinstance(error, openai.APIStatusError):
        return f"HTTP {error.status_code}: {error.message}", error.status_code
    if isinstance(error, openai.APITimeoutError):
        return "timed out (raise `timeout` if the server is just slow)", None
    if isinstance(error, openai.APIConnectionError):
        return f"connection failed ({error.__cause__ or error})", None
    if isinstance(error, json.JSONDecodeError):
        return f"malformed JSON in the response ({error})", None
    return f"{type(error).__name__}: {error}", None


def is_retryable(error: BaseException) -> bool:
    openai = _openai()
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRYABLE_STATUS or error.status_code >= 500
    if isinstance(error, openai.APIConnectionError) and connection_refused(error):
        return False
    return isinstance(error, (openai.APIConnectionError, json.JSONDecodeError))


def call_with_retries(
    send: Callable[[], T],
    policy: RetryPolicy,
    budget: RequestBudget,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
    redact: Callable[[str], str] = str,
) -> T:
    """``send()`` until it succeeds; each attempt takes one request from ``budget``.

    ``redact`` cleans server error text before it is logged or raised (a proxy may echo the key back).

    Raises ``ApiRequestError`` naming ``what``, the HTTP status and the attempt count on a non-retryable
    error or once ``policy.max_retries`` retries are used; ``RequestBudgetExceeded`` when the budget ends.
    """
    openai = _openai()
    attempts = policy.max_retries + 1
    for attempt in range(attempts):
        budget.take()
        try:
            return send()
        except (openai.APIError, json.JSONDecodeError) as error:
            text, status = describe(error)
            text = redact(text)
            cause = error if redact(str(error)) == str(error) else None  # no traceback that shows the key
            if connection_refused(error):
                raise ApiRequestError(f"{what} failed: {text}", status) from cause
            if not is_retryable(error):
                raise ApiRequestError(f"{what} failed with {text}; not retried (this error does not go away by "
                                      "asking again: check the model name, key and parameters)", status) from cause
            if attempt + 1 == attempts:
                raise ApiRequestError(f"{what} failed after {attempts} attempts; last error: {text}",
                                      status) from cause
            pause = policy.backoff(attempt, retry_after_seconds(error))
            log.warning("%s: %s; retry %d/%d in %.2fs", what, text, attempt + 1, policy.max_retries, pause)
            sleep(pause)
    raise AssertionError("unreachable")  # the loop returns or raises
