"""The public entry point: run untrusted programs against a problem's tests, in parallel, isolated.

Threat model and layers: ``egcfg_pl/sandbox/README.md``. In short, each worker is a fork server
started inside fresh pid/net/mount/ipc/uts namespaces with a read-only chroot that holds only the
system libraries and the base interpreter (``python -I``); each program runs in a forked child under
its own unprivileged uid with rlimits, an empty environment and a private work dir; after each
program every process in the namespace is killed. A test passes only on a verdict from the trusted
side (see ``jobs.py``), never on an exit code.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

from egcfg_pl.problems.problem import Problem
from egcfg_pl.sandbox import layers
from egcfg_pl.sandbox.config import SandboxConfig
from egcfg_pl.sandbox.jobs import build_jobs, judge
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict
from egcfg_pl.sandbox.worker import Worker

log = logging.getLogger(__name__)


class Executor:
    """``run(problem, program) -> Verdict``; ``run_many`` keeps order and uses every worker."""

    def __init__(self, config: SandboxConfig | None = None, **overrides):
        self.config = replace(config or SandboxConfig(), **overrides)
        self.plan = layers.plan(self.config.isolation)
        if self.plan.missing and not self.config.allow_unsafe:
            raise RuntimeError(
                f"sandbox isolation '{self.plan.mode}' lacks required layers {list(self.plan.missing)}; "
                "run as root on Linux with namespaces, or set SandboxConfig.allow_unsafe=True to accept the risk"
            )
        level = logging.WARNING if self.plan.missing else logging.INFO
        log.log(level, "sandbox: mode=%s layers=%s missing=%s", self.plan.mode, ",".join(self.plan.layers),
                ",".join(self.plan.missing) or "none")
        self.num_workers = self.config.workers or os.cpu_count() or 1
        self._idle: queue.SimpleQueue[Worker] = queue.SimpleQueue()
        self._workers: list[Worker] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(self.num_workers, thread_name_prefix="sandbox")
        self._closed = False

    @property
    def layers(self) -> list[str]:
        """The isolation layers active for every program."""
        return list(self.plan.layers)

    # -- workers ---------------------------------------------------------------------------------
    def _acquire(self) -> Worker:
        try:
            return self._idle.get_nowait()
        except queue.Empty:
            pass
        with self._lock:
            if self._closed:
                raise RuntimeError("Executor is closed")
            if len(self._workers) < self.num_workers:
                worker = Worker(self.plan, self.config, len(self._workers))
                self._workers.append(worker)
                return worker
        return self._idle.get()

    # -- running ---------------------------------------------------------------------------------
    def run(self, problem: Problem, program: str) -> Verdict:
        """Run ``program`` against every test of ``problem``; one ``TestResult`` per test, in order."""
        return self.run_many([(problem, program)])[0]

    def run_many(self, jobs: Sequence[tuple[Problem, str]]) -> list[Verdict]:
        """Run many (problem, program) pairs in parallel; results keep the input order."""
        if self._closed:
            raise RuntimeError("Executor is closed")
        return list(self._pool.map(lambda job: self._run_one(*job), jobs))

    def _run_one(self, problem: Problem, program: str) -> Verdict:
        results: list[TestResult | None] = [None] * len(problem.tests)
        seconds = 0.0
        worker = self._acquire()
        try:
            for job in build_jobs(problem, program, self.config):
                raw = worker.run(job.spec, job.tests)
                if raw is None:
                    for c in job.checks:
                        results[c.index] = TestResult(Status.KILLED, 0.0, "sandbox server lost; restarted")
                    continue
                seconds += float(raw["seconds"])
                for check, r in zip(job.checks, raw["results"]):
                    results[check.index] = _oom(judge(check, r), raw["oom_killed"])
        finally:
            self._idle.put(worker)
        return Verdict(problem.id, tuple(r for r in results if r is not None), seconds)

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> None:
        """Stop every fork server (their namespaces die with them)."""
        with self._lock:
            self._closed = True
            workers, self._workers = self._workers, []
        self._pool.shutdown(wait=True)
        for w in workers:
            w.close()

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self._closed:
                self.close()
        except Exception:
            pass


def _oom(result: TestResult, oom_killed: bool) -> TestResult:
    """A SIGKILL during a job in which the cgroup OOM-killed something is a memory verdict."""
    if oom_killed and result.status is Status.KILLED and "SIGKILL" in result.detail:
        return TestResult(Status.MEMORY, result.seconds, "out of memory (cgroup limit)")
    return result
