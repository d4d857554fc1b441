"""A problem's trusted test code: what the test process runs, and which names it takes from the program.

The test process (``remote.py``) runs the problem's own code only: its ``test_setup`` and the helpers
its prompt defines (HumanEval's ``poly``, ``encode_cyclic``: the dataset's definitions, never the
program's copies, which a program could rewrite), then the tests. The names the test code uses but
does not define (the entry point, a class the tests build objects of) are looked up in the program's
process and become proxies. The program's process runs the program plus only the import lines of the
setup (the official harnesses run the setup in the program's namespace; imports reveal nothing).
"""

from __future__ import annotations

import ast
import builtins
import functools

from egcfg_pl.ast_parse import parse

_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _parse(code: str) -> ast.Module | None:
    try:
        return parse(code)
    except (SyntaxError, ValueError):
        return None


def _is_stub(node: ast.AST) -> bool:
    """A def whose body is only a docstring / ``pass`` / ``...``: something the program must define."""
    if not isinstance(node, _DEFS):
        return False
    return all(isinstance(s, ast.Pass) or (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant))
               for s in node.body)


@functools.lru_cache(maxsize=1 << 12)
def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's top-level code except the entry point and stubs (imports, helper defs, constants)."""
    tree = _parse(prompt)
    if tree is None:
        return ""
    keep = [n for n in tree.body if not _is_stub(n) and not (isinstance(n, _DEFS) and n.name == entry_point)]
    return "\n".join(ast.get_source_segment(prompt, n) or ast.unparse(n) for n in keep)


@functools.lru_cache(maxsize=1 << 12)
def setup_imports(setup: str) -> str:
    """The top-level import lines of a test setup (what the program's namespace also gets)."""
    tree = _parse(setup)
    if tree is None:
        return ""
    return "\n".join(ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom)))


@functools.lru_cache(maxsize=1 << 12)
def program_names(codes: tuple[str, ...], entry_point: str) -> tuple[str, ...]:
    """Names the test code reads but never binds, builtins and dunders aside (the entry point always,
    even when it shadows a builtin): the ones to take from the program. The test process accepts
    no other name from it (``remote.accept``)."""
    read, bound = set(), set()
    for code in codes:
        tree = _parse(code)
        for node in ast.walk(tree) if tree is not None else ():
            if isinstance(node, ast.Name):
                (read if isinstance(node.ctx, ast.Load) else bound).add(node.id)
            elif isinstance(node, _DEFS):
                bound.add(node.name)
            elif isinstance(node, ast.arg):
                bound.add(node.arg)
            elif isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.ExceptHandler) and node.name:
                bound.add(node.name)
    names = {n for n in read - bound - set(dir(builtins)) if not n.startswith("__")}
    names |= {entry_point} if entry_point else set()
    return tuple(sorted(names))
