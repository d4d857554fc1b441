"""Which isolation layers this machine offers, and the command that starts a fork server inside them.

Detected once per process and logged by the executor. A configuration that lacks a required layer
(network isolation, filesystem isolation, orphan control) is refused unless ``allow_unsafe``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass

from egcfg_pl.sandbox import cgroups

REQUIRED = ("net-namespace", "readonly-root", "pid-namespace-or-uid-kill", "uid-drop")
NAMESPACE_FLAGS = ("--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--ipc", "--uts", "--mount")
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
"""The whole environment a program sees (plus HOME/TMPDIR = its work dir): no secrets pass."""


@dataclass(frozen=True)
class Plan:
    """How to start a fork server, and which layers that gives."""

    mode: str  # "namespaces" | "process"
    prefix: tuple[str, ...]  # command run before the interpreter (unshare ...)
    chroot: bool
    root: bool  # running as root: programs get their own unprivileged uid
    layers: tuple[str, ...]
    missing: tuple[str, ...]
    cgroups: bool = False  # per-worker memory + pids cgroups


def interpreter() -> str:
    """The real interpreter binary behind ``sys.executable`` (a venv's ``bin/python`` is a symlink to it;
    the venv itself, with this project installed in it, stays outside the sandbox)."""
    return os.path.realpath(sys.executable)


def readonly_paths() -> list[str]:
    """What the sandbox root contains (read-only): system libraries and the base interpreter."""
    paths = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
             "/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/localtime"]
    paths.append(os.path.realpath(sys.base_prefix))
    paths.append(os.path.dirname(interpreter()))
    return [p for p in dict.fromkeys(paths) if os.path.lexists(p)]


@functools.lru_cache(maxsize=None)
def namespaces_available() -> bool:
    """True when ``unshare`` can create pid/net/mount/ipc/uts namespaces here (as root, or via a user ns)."""
    if shutil.which("unshare") is None:
        return False
    cmd = ["unshare", *_user_flags(), *NAMESPACE_FLAGS, "true"]
    try:
        return subprocess.run(cmd, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _user_flags() -> tuple[str, ...]:
    return () if os.geteuid() == 0 else ("--user", "--map-root-user")


def plan(isolation: str) -> Plan:
    """Resolve ``SandboxConfig.isolation`` to a launch plan with its active and missing layers."""
    root = os.geteuid() == 0
    use_ns = isolation == "namespaces" or (isolation == "auto" and namespaces_available())
    use_cg = cgroups.available()
    common = ("rlimits", "new-session", "no-new-privs", "env-scrub", "python-isolated(-I)", "audit-hook")
    common += ("cgroup-memory+pids",) if use_cg else ()
    if use_ns:
        if not namespaces_available():
            raise RuntimeError("SandboxConfig.isolation='namespaces' but `unshare` cannot create namespaces "
                               "here; use isolation='process' with allow_unsafe=True, or run as root")
        layers = ("user-namespace",) if not root else ()
        layers += ("pid-namespace", "net-namespace", "mount-namespace", "ipc-namespace", "uts-namespace",
                   "readonly-root", "pid-namespace-or-uid-kill")
        if root:
            layers += ("uid-drop",)
        missing = tuple(r for r in REQUIRED if r not in layers)
        prefix = ("unshare", *_user_flags(), *NAMESPACE_FLAGS)
        return Plan("namespaces", prefix, True, root, layers + common, missing, use_cg)
    layers = ("uid-drop", "pid-namespace-or-uid-kill") if root else ()
    missing = tuple(r for r in REQUIRED if r not in layers)
    return Plan("process", (), False, root, layers + common, missing, use_cg)
