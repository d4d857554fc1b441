"""``ast.parse`` that is safe to call from several threads at once.

CPython before 3.13 builds the Python AST objects (``PyAST_mod2obj``) with a recursion counter kept in
interpreter-wide state, reset to the calling thread's stack depth at the start of every parse. When a garbage
collection inside one thread's parse runs a finalizer that lets another thread start a parse, the first one ends
with ``SystemError: AST constructor recursion depth mismatch`` (CPython gh-106905 and related reports). The
sandbox builds its jobs in the executor's worker threads, so a test run or a campaign hit it under load (seen
once in a full test run on 3.11.7; a stress loop of 6 threads at different stack depths with finalizers that
yield the GIL hits it about once per 50,000 parses). One process-wide lock around the parse removes the
interleaving; the parse itself is unchanged.
"""

from __future__ import annotations

import ast
import threading

_LOCK = threading.RLock()  # re-entrant: a finalizer that runs inside a parse may parse too


def parse(source: str, filename: str = "<unknown>", mode: str = "exec") -> ast.AST:
    """``ast.parse(source, filename, mode)``, one thread at a time."""
    with _LOCK:
        return ast.parse(source, filename, mode)
