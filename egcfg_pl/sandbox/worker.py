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

from egcfg_pl.sandbox import cgroups, layers
from egcfg_pl.sandbox.config import SandboxConfig

SERVER_PARTS = ("values.py", "remote.py", "rootfs.py", "harness.py", "server.py")


def server_source() -> str:
    """The fork server as one ``python -c`` program: its parts in order, minus their package imports
    (``# inlined`` lines), since the sandbox cannot import ``egcfg_pl``."""
    here = Path(__file__).parent
    parts = [(here / name).read_text() for name in SERVER_PARTS]
    lines = [line for part in parts for line in part.splitlines() if not line.endswith("# inlined")]
    return "\n".join(lines) + "\n"


SERVER_SOURCE = server_source()
STARTUP_SECONDS = 30.0


def program_uid(base_uid: int, index: int) -> int:
    """Unprivileged uid for worker ``index``'s programs: distinct per worker and, with high
    probability, per executor process (RLIMIT_NPROC counts per uid, so executors must not share)."""
    return base_uid + 64 * (os.getpid() % 1024) + index % 64


TEST_UID_OFFSET = 64 * 1024
"""Worker k's test processes run as ``program_uid(base_uid, k) + TEST_UID_OFFSET``: a uid no program
uses, so a program can neither signal, trace nor read the process that judges it."""


class WorkerError(RuntimeError):
    """The fork server failed to start or broke its protocol."""


class Worker:
    """A fork server in its own isolation. ``run`` sends one job; a wedged server is restarted."""

    def __init__(self, plan: layers.Plan, config: SandboxConfig, index: int):
        self.plan, self.config, self.index = plan, config, index
        self.proc: subprocess.Popen | None = None
        self._buf = b""
        self.cgroups: cgroups.WorkerCgroups | None = None
        if plan.cgroups:
            mem = (config.memory_mb + config.tmp_mb + 256) * 2**20  # program + its files + the server
            self.cgroups = cgroups.WorkerCgroups(mem, config.max_processes + 8)
        self.start()

    def _server_config(self) -> dict[str, Any]:
        return {
            "chroot": self.plan.chroot,
            "ro_paths": layers.readonly_paths(),
            "tmp_mb": self.config.tmp_mb,
            "uid": program_uid(self.config.base_uid, self.index) if self.plan.root else None,
            "test_uid": program_uid(self.config.base_uid, self.index) + TEST_UID_OFFSET if self.plan.root else None,
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
        if self.cgroups is not None:
            cmd = self.cgroups.wrap(cmd)
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

    def run(self, job: dict[str, Any], tests: dict[str, Any] | None = None) -> dict[str, Any] | None:
        """Send a job, answer the server's requests for its test code, wait for its result. None (and a
        restarted server) when the server broke.

        ``tests`` (assert/call jobs) is the test code: sent right after the job (the server reads it
        once it forked the program's process) and again whenever the server asks (``{"tests": i}``,
        when it starts a test process again after a timeout), so the server never holds test code
        while it forks a program's process.
        ``result["oom_killed"]`` is True when the kernel OOM-killed a process of this job (cgroup limit).
        """
        assert self.proc is not None and self.proc.stdin is not None
        ooms = self.cgroups.oom_kills() if self.cgroups is not None else 0
        n = job["n"] if "n" in job else len(job["tests"])
        budget = job["limits"]["timeout"] * (2 * n + 2) + 10.0  # the server enforces the real limits
        deadline = time.monotonic() + budget
        try:
            self._send(job)
            if tests is not None:
                self._send(tests)  # read by the server once it forked the program's process
            result = self._read_line(deadline)
            while result is not None and "tests" in result and tests is not None:
                self._send(tests)
                result = self._read_line(deadline)
        except (BrokenPipeError, OSError, ValueError):
            result = None
        if result is None or "server_error" in result or "results" not in result:
            self.restart()
            return None
        result["oom_killed"] = self.cgroups is not None and self.cgroups.oom_kills() > ooms
        return result

    def _send(self, obj: dict[str, Any]) -> None:
        """One length-prefixed frame (the server reads exactly its bytes, see ``server.py``)."""
        assert self.proc is not None and self.proc.stdin is not None
        data = json.dumps(obj).encode()
        self.proc.stdin.write(b"%011d\n" % len(data) + data)
        self.proc.stdin.flush()

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
        self._shutdown()
        if self.cgroups is not None:
            self.cgroups.remove()

    def _shutdown(self) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            self.proc.wait(timeout=5)
        except (subprocess.TimeoutExpired, OSError):
            pass
        self.kill()
