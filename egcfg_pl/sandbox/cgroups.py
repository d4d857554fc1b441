"""Per-worker cgroups: bound the *total* memory and process count of everything a program starts.

rlimits are per process (RLIMIT_AS) or per uid (RLIMIT_NPROC), so 64 forked children of 1 GiB each
could still take 64 GiB of host memory; a memory + pids cgroup around each fork server closes that.
The cgroups are created under the executor's own cgroup (cgroup v1 ``memory``/``pids`` hierarchies,
or the unified v2 tree) and removed on close. Optional: without them the executor logs the missing
layer and relies on rlimits.
"""

from __future__ import annotations

import os
import shlex
import time
import uuid
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")


def _own_path(controller: str) -> str | None:
    """This process's cgroup path for a v1 controller, or for v2 when ``controller`` is ''."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        _, names, path = line.split(":", 2)
        if (controller and controller in names.split(",")) or (not controller and names == ""):
            return path
    return None


def _v2_dir() -> Path | None:
    if not (CGROUP_ROOT / "cgroup.controllers").exists():
        return None
    path = _own_path("")
    base = CGROUP_ROOT / (path or "/").lstrip("/")
    try:
        enabled = (base / "cgroup.subtree_control").read_text().split()
    except OSError:
        return None
    return base if {"memory", "pids"} <= set(enabled) else None


def available() -> bool:
    """True when this process can create memory and pids cgroups below its own."""
    if os.geteuid() != 0:
        return False
    if _v2_dir() is not None:
        return True
    return all((CGROUP_ROOT / c).is_dir() and _own_path(c) is not None for c in ("memory", "pids"))


class WorkerCgroups:
    """The cgroups of one fork server; ``wrap(cmd)`` starts ``cmd`` inside them."""

    def __init__(self, memory_bytes: int, max_pids: int):
        name = f"egcfg-sandbox-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        v2 = _v2_dir()
        if v2 is not None:
            self.dirs = [v2 / name]
            limits = {"memory.max": memory_bytes, "memory.swap.max": 0, "pids.max": max_pids}
        else:
            self.dirs = [CGROUP_ROOT / c / (_own_path(c) or "/").lstrip("/") / name for c in ("memory", "pids")]
            limits = {"memory.limit_in_bytes": memory_bytes, "pids.max": max_pids}
        for d in self.dirs:
            d.mkdir()
        for key, value in limits.items():
            for d in self.dirs:
                if (d / key).exists():
                    (d / key).write_text(str(value))
        self._oom_file = next((d / f for d in self.dirs for f in ("memory.events", "memory.oom_control")
                               if (d / f).exists()), None)

    def wrap(self, cmd: list[str]) -> list[str]:
        """``sh`` moves itself into the cgroups, then execs ``cmd`` (children inherit the cgroups)."""
        moves = "; ".join(f"echo $$ > {shlex.quote(str(d / 'cgroup.procs'))} || exit 97" for d in self.dirs)
        return ["/bin/sh", "-c", f'{moves}; exec "$@"', "sh", *cmd]

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in these cgroups so far."""
        if self._oom_file is None:
            return 0
        for line in self._oom_file.read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def remove(self) -> None:
        for d in self.dirs:
            for _ in range(50):  # the last processes may take a moment to leave
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.02)
