"""Start llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with a GGUF, for the real-server tests.

The package is built from source by the Makefile rule for ``$(VENV)/.llama-server``; that rule writes
``ok`` or the failure reason into the stamp file, which ``unavailable_reason()`` reports as the skip reason.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STAMP = Path(sys.prefix) / ".llama-server"  # written by `make test` (Makefile rule for $(VENV)/.llama-server)
PACKAGE = "llama-cpp-python[server]==0.3.36"


def unavailable_reason() -> str | None:
    """None when ``llama_cpp.server`` imports; else why not (the build failure recorded in the stamp)."""
    probe = subprocess.run([sys.executable, "-c", "import llama_cpp.server.app"], capture_output=True, text=True)
    if probe.returncode == 0:
        return None
    recorded = STAMP.read_text(errors="replace").strip() if STAMP.is_file() else f"{STAMP} does not exist"
    error = (probe.stderr.strip().splitlines() or ["?"])[-1]
    return f"{PACKAGE} is unusable ({error}); build record: {recorded}. Build it with `make {STAMP}`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LlamaServer:
    """``python -m llama_cpp.server`` serving ``gguf`` as model ``alias`` on a free loopback port."""

    def __init__(self, gguf: Path, log_path: Path, alias: str = "smollm2", n_ctx: int = 2048) -> None:
        self.alias = alias
        self.port = free_port()
        self.log_path = log_path
        command = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias", alias,
                   "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", str(n_ctx), "--n_threads", "2"]
        self._log = open(log_path, "w")
        # OpenMP threads spin-wait by default: on a busy 2-core machine that makes tokens 3-40x slower
        env = {**os.environ, "OMP_WAIT_POLICY": "passive"}
        self.process = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, env=env)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll ``GET /v1/models`` until the server lists the model; fail with its log if it dies."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"llama_cpp.server exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as response:
                    if any(m.get("id") == self.alias for m in json.load(response).get("data", [])):
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
                pass
            time.sleep(0.5)
        raise TimeoutError(f"llama_cpp.server not ready after {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()
