"""One fork server process (see ``server.py``) and the pipe protocol the host speaks with it."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from egcfg_pl.sandbox import layers
from egcfg_pl.sandbox.config import SandboxConfig

SERVER_SOURCE = Path(__file__).with_name("server.py").read_text()
STARTUP_SECONDS = 30.0


class WorkerError(RuntimeError):
    """The fork server failed to start or broke its protocol."""


class Worker:
    """A fork server in its own isolation. ``run`` sends one job; a wedged server is restarted."""

    def __init__(self, plan: layers.Plan, config: SandboxConfig, index: int):
        self.plan, self.config, self.index = plan, config, index
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.start()

    def _server_config(self) -> dict[str, Any]:
        return {
            "chroot": self.plan.chroot,
            "ro_paths": layers.readonly_paths(),
            "tmp_mb": self.config.tmp_mb,
            "uid": self.config.base_uid + self.index if self.plan.root else None,
            "env": layers.ENV,
            "work_root": "/tmp" if self.plan.chroot else tempfile.mkdtemp(prefix="egcfg-sandbox-"),
            "preimport": list(self.config.preimport),
        }

    def start(self) -> None:
        cfg = self._server_config()
        if not self.plan.chroot and cfg["uid"] is not None:
            os.chmod(cfg["work_root"], 0o755)
        self._work_root = None if self.plan.chroot else cfg["work_root"]
        cmd = [*self.plan.prefix, layers.interpreter(), "-I", "-c", SERVER_SOURCE, json.dumps(cfg)]
        self._stderr = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                     env=dict(layers.ENV), cwd="/", start_new_session=True)
        self._buf = b""
        ready = self._read_line(time.monotonic() + STARTUP_SECONDS)
        if ready is None or not ready.get("ready"):
            self._stderr.seek(0)
            err = self._stderr.read().decode(errors="replace")[-2000:]
            self.kill()
            raise WorkerError(f"sandbox fork server did not start (mode={self.plan.mode}):\n{err}")

    def _read_line(self, deadline: float) -> dict[str, Any] | None:
        assert self.proc is not None and self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return json.loads(line)

    def run(self, job: dict[str, Any]) -> dict[str, Any] | None:
        """Send a job, wait for its result. None (and a restarted server) when the server broke."""
        assert self.proc is not None and self.proc.stdin is not None
        n = len(job["tests"])
        budget = job["limits"]["timeout"] * (2 * n + 2) + 10.0  # the server enforces the real limits
        try:
            self.proc.stdin.write(json.dumps(job).encode() + b"\n")
            self.proc.stdin.flush()
            result = self._read_line(time.monotonic() + budget)
        except (BrokenPipeError, OSError, ValueError):
            result = None
        if result is None or "server_error" in result:
            self.restart()
            return None
        return result

    def restart(self) -> None:
        self.kill()
        self.start()

    def kill(self) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)  # unshare --kill-child takes the namespace with it
        except ProcessLookupError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self._stderr.close()
        self.proc = None
        if self._work_root is not None:
            import shutil

            shutil.rmtree(self._work_root, ignore_errors=True)

    def close(self) -> None:
        """Polite shutdown: EOF on stdin ends the server (and its namespace); then make sure."""
        if self.proc is None:
            return
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            pass
        self.kill()
