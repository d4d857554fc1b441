"""Sandbox settings; one field per knob, documented here (they become CLI/YAML help)."""

from __future__ import annotations

from dataclasses import dataclass

ISOLATION_MODES = ("auto", "namespaces", "process")


@dataclass
class SandboxConfig:
    """How untrusted programs are run and judged (see ``egcfg_pl/sandbox/README.md``)."""

    timeout: float = 3.0
    """Wall-clock seconds allowed per test (and for the program's own top-level code)."""

    check_timeout: float | None = None
    """Wall-clock seconds for one program's whole assert/call check: its top-level code plus every test,
    restarts after a failed test included, as the official HumanEval / MBPP harnesses give 3 s to
    ``exec(program + check)``. Tests still unfinished when it runs out are TIMEOUT. None (the default)
    leaves only the per-test ``timeout``, which is more lenient than those harnesses for problems with many
    tests; set ``check_timeout=3.0`` (``timeout`` stays the per-test cap) to score as they do. stdio tests
    are separate runs of the program, each with ``timeout``."""

    memory_mb: int = 1024
    """Address-space limit (RLIMIT_AS) of the program's process, in MiB."""

    workers: int | None = None
    """Programs run in parallel (one fork server each); None = ``os.cpu_count()``."""

    isolation: str = "auto"
    """'namespaces' (user/net/pid/mount/ipc/uts namespaces + read-only chroot + uid drop + rlimits),
    'process' (rlimits, new session, uid drop when root; no filesystem or network isolation), or
    'auto' (namespaces when the kernel allows them, else process)."""

    allow_unsafe: bool = False
    """Run even when the chosen isolation lacks a required layer (network, filesystem, orphan
    control). Off by default: the executor refuses to start instead."""

    max_output_bytes: int = 1_000_000
    """Cap on a program's stdout per test (stdio tests) and on one reported value; more is a failure."""

    max_processes: int = 64
    """RLIMIT_NPROC for the program's uid (each worker has its own uid): bounds fork bombs."""

    max_file_mb: int = 16
    """RLIMIT_FSIZE: the largest file the program may write, in MiB."""

    max_open_files: int = 256
    """RLIMIT_NOFILE for the program."""

    tmp_mb: int = 64
    """Size of the tmpfs that holds the work directories inside the sandbox, in MiB."""

    base_uid: int = 61000
    """Programs of worker k run as uid ``base_uid + 64 * (pid % 1024) + k % 64`` (pid = the executor's
    process), so concurrent executors rarely share a uid; used only when the executor runs as root."""

    preimport: tuple[str, ...] = (
        "collections", "itertools", "functools", "heapq", "bisect", "math", "re", "string",
        "typing", "random", "json", "fractions", "decimal", "statistics", "operator", "copy",
        "hashlib", "datetime", "array", "io",
    )
    """Standard-library modules the fork server imports once, so each program starts warm."""

    def __post_init__(self) -> None:
        if self.isolation not in ISOLATION_MODES:
            raise ValueError(f"SandboxConfig.isolation={self.isolation!r}; use one of {ISOLATION_MODES}")
        for name in ("timeout", "memory_mb", "max_output_bytes", "max_processes", "max_file_mb",
                     "max_open_files", "tmp_mb"):
            if not getattr(self, name) > 0:
                raise ValueError(f"SandboxConfig.{name} must be > 0, got {getattr(self, name)!r}")
        if self.check_timeout is not None and not self.check_timeout > 0:
            raise ValueError(f"SandboxConfig.check_timeout must be > 0 or None (per-test timeouts only), "
                             f"got {self.check_timeout!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"SandboxConfig.workers must be >= 1 or None (= all cores), got {self.workers}")
        if self.max_open_files < 64:
            raise ValueError(f"SandboxConfig.max_open_files must be >= 64, got {self.max_open_files}")
