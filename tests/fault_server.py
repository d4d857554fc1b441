"""A tiny fault-injecting OpenAI-compatible server on 127.0.0.1, for the API sampler's tests.

It serves ``POST /v1/chat/completions`` and ``POST /v1/completions``. Each request first takes the
next scripted fault, if any (``script``), then answers normally. A normal answer has
``min(n, max_choices)`` choices (``max_choices=1`` imitates llama.cpp, which ignores ``n``) and, when
``with_logprobs`` is set and the request asked for them, per-token log-probs. Every choice's text is a
small Python program that names the request's seed and choice index, so distinct requests give distinct
programs. All requests are counted and their JSON bodies kept (``bodies``) for the tests to inspect.

Faults: ``Fault.status(429, retry_after="0.5")``, ``Fault.status(500)``, ``Fault.slow(2.0)`` (sleeps,
then answers normally: past a client timeout), ``Fault.malformed()`` (200 with broken JSON),
``Fault.drop()`` (closes the socket without answering), ``Fault.empty()`` (200 with no choices).
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

TOKEN_LOGPROB = -0.25  # every fake token's log-prob: a known value the tests can check sums against


@dataclass(frozen=True)
class Fault:
    kind: str  # status | slow | malformed | drop | empty
    status_code: int = 0
    retry_after: str | None = None
    seconds: float = 0.0
    echo_auth: bool = False  # put the request's Authorization header in the error message (a leaky proxy)

    @classmethod
    def status(cls, code: int, retry_after: str | None = None, echo_auth: bool = False) -> Fault:
        return cls("status", status_code=code, retry_after=retry_after, echo_auth=echo_auth)

    @classmethod
    def slow(cls, seconds: float) -> Fault:
        return cls("slow", seconds=seconds)

    @classmethod
    def malformed(cls) -> Fault:
        return cls("malformed")

    @classmethod
    def drop(cls) -> Fault:
        return cls("drop")

    @classmethod
    def empty(cls) -> Fault:
        return cls("empty")


def program_text(seed: Any, index: int) -> str:
    return f"```python\ndef answer():\n    return {seed!r}, {index}\n```"


def fake_tokens(text: str) -> list[str]:
    """Whitespace-split 'tokens' (good enough to count and sum log-probs over)."""
    return text.split()


@dataclass
class FaultServer:
    """Start with ``with FaultServer(...) as server:``; ``server.base_url`` ends in ``/v1``."""

    script: list[Fault] = field(default_factory=list)
    max_choices: int = 1000
    with_logprobs: bool = True
    requests: int = 0
    bodies: list[dict] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list, repr=False)
    in_flight: int = 0
    max_in_flight: int = 0  # most requests being handled at once (checks the sampler's concurrency)

    def __post_init__(self) -> None:
        self._faults: deque[Fault] = deque(self.script)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(self))
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def push(self, *faults: Fault) -> None:
        with self._lock:
            self._faults.extend(faults)

    def next_fault(self, body: dict, auth: str) -> Fault | None:
        with self._lock:
            self.requests += 1
            self.bodies.append(body)
            self.auth_headers.append(auth)
            return self._faults.popleft() if self._faults else None

    def enter_request(self, delta: int) -> None:
        with self._lock:
            self.in_flight += delta
            self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def answer(self, path: str, body: dict) -> dict:
        n = min(int(body.get("n") or 1), self.max_choices)
        seed = body.get("seed")
        chat = path.endswith("/chat/completions")
        choices = [self._choice(chat, body, seed, i) for i in range(n)]
        return {
            "id": f"fake-{self.requests}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": choices,
            "usage": {"prompt_tokens": 3, "completion_tokens": 7 * n, "total_tokens": 3 + 7 * n},
        }

    def _choice(self, chat: bool, body: dict, seed: Any, index: int) -> dict:
        text = program_text(seed, index)
        tokens = fake_tokens(text)
        if chat:
            logprobs = None
            if self.with_logprobs and body.get("logprobs"):
                content = [{"token": t, "logprob": TOKEN_LOGPROB, "bytes": None, "top_logprobs": []} for t in tokens]
                logprobs = {"content": content, "refusal": None}
            message = {"role": "assistant", "content": text}
            return {"index": index, "message": message, "logprobs": logprobs, "finish_reason": "stop"}
        logprobs = None
        if self.with_logprobs and body.get("logprobs"):
            logprobs = {
                "tokens": tokens,
                "token_logprobs": [TOKEN_LOGPROB] * len(tokens),
                "top_logprobs": None,
                "text_offset": list(range(len(tokens))),
            }
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": "stop"}


def _make_handler(server: FaultServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            server.enter_request(+1)
            try:
                self._handle()
            finally:
                server.enter_request(-1)

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            fault = server.next_fault(body, self.headers.get("Authorization", ""))
            if fault is not None and fault.kind == "drop":
                self.close_connection = True
                self.connection.shutdown(2)  # SHUT_RDWR: the client sees the connection reset
                return
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if fault is not None and fault.kind == "status":
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                message = f"injected HTTP {fault.status_code}"
                if fault.echo_auth:
                    message += f" (you sent {self.headers.get('Authorization')})"
                error = {"error": {"message": message, "type": "fault", "code": None}}
                return self._send(fault.status_code, json.dumps(error).encode(), headers)
            if fault is not None and fault.kind == "malformed":
                return self._send(200, b'{"id": "broken", "choices": [', {})
            if fault is not None and fault.kind == "empty":
                return self._send(200, b'{"id": "empty", "object": "chat.completion", "choices": []}', {})
            if self.path not in ("/v1/chat/completions", "/v1/completions"):
                return self._send(404, b'{"error": {"message": "no such route"}}', {})
            self._send(200, json.dumps(server.answer(self.path, body)).encode(), {})

        def _send(self, code: int, payload: bytes, headers: dict[str, str]) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(payload)
            except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                pass

    return Handler
