"""``egcfg_pl.ast_parse.parse``: one parse at a time across threads (CPython < 3.13 builds AST objects with an
interpreter-wide recursion counter; two interleaved parses fail with ``SystemError: AST constructor recursion depth
mismatch``, seen once in a full test run from the sandbox's worker threads)."""

from __future__ import annotations

import ast
import gc
import re
import threading
import time
from pathlib import Path

import pytest

import egcfg_pl.ast_parse as ast_parse

PACKAGE = Path(ast_parse.__file__).resolve().parent


def test_parses_never_overlap_across_threads(monkeypatch):
    inside, overlaps = [], []
    real = ast.parse

    def slow_parse(source, filename, mode):  # yields the GIL mid-parse, as a finalizer in a GC pass can
        inside.append(1)
        overlaps.append(len(inside))
        time.sleep(0.01)
        inside.pop()
        return real(source, filename, mode)

    monkeypatch.setattr(ast_parse.ast, "parse", slow_parse)
    threads = [threading.Thread(target=lambda: [ast_parse.parse("x = 1") for _ in range(5)]) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert len(overlaps) == 20 and max(overlaps) == 1


def test_the_result_is_ast_parse_s():
    assert ast.dump(ast_parse.parse("def f(a):\n    return a + 1")) == ast.dump(ast.parse("def f(a):\n    return a + 1"))
    assert isinstance(ast_parse.parse("1 + 2", mode="eval"), ast.Expression)


def test_the_package_parses_only_through_it():
    """The sandbox builds jobs in worker threads, and any other module may be called from one: no bare ast.parse."""
    bare = [f"{path.relative_to(PACKAGE)}:{n}" for path in PACKAGE.rglob("*.py") if path.name != "ast_parse.py"
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
            if re.search(r"\bast\.parse\(", line)]
    assert bare == []


class _YieldsInGC:
    def __del__(self):
        time.sleep(0)  # a finalizer run by a GC pass inside a parse lets another thread in


@pytest.mark.slow
def test_threads_at_different_depths_parse_under_gc_pressure_without_systemerror():
    """The race itself: 4 threads at different stack depths, each leaving a cycle with a GIL-yielding finalizer
    before every parse, with a low GC threshold. Bare ``ast.parse`` failed with the SystemError in each of 3 runs of
    this loop on CPython 3.11.7 (after ~9,000 parses); through the lock it never did (3 runs)."""
    errors: list[BaseException] = []

    def deep(n: int) -> None:
        if n:
            return deep(n - 1)
        for _ in range(3000):
            a, b = _YieldsInGC(), _YieldsInGC()
            a.b, b.a = b, a
            del a, b
            try:
                ast_parse.parse(SOURCE)
            except SystemError as error:
                errors.append(error)
                return

    thresholds = gc.get_threshold()
    gc.set_threshold(10, 1, 1)
    try:
        threads = [threading.Thread(target=deep, args=(d,)) for d in (1, 5, 9, 13)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    finally:
        gc.set_threshold(*thresholds)
    assert errors == []


SOURCE = ("assert candidate([" + ", ".join(str(i) for i in range(40)) + "]) == [[1, [2, [3]]], {'a': (1, 2)}]\n") * 20
