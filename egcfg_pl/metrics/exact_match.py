"""Exact match of a program against reference solutions, after normalisation."""

from __future__ import annotations

import ast
from collections.abc import Sequence

import torch
from egcfg_pl.ast_parse import parse
from egcfg_pl.metrics.base import SumStateMetric

_DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def _strip_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if not isinstance(node, _DOCSTRING_OWNERS) or not node.body:
            continue
        first = node.body[0]
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            node.body = node.body[1:] or ([] if isinstance(node, ast.Module) else [ast.Pass()])
    return tree


def _collapse_whitespace(source: str) -> str:
    return " ".join(source.split())


def canonical_ast(source: str) -> str | None:
    """``ast.unparse`` of the program with docstrings removed, or ``None`` if it does not parse.

    Comments, blank lines, indentation width, quote style, redundant parentheses and line endings
    all disappear; identifiers, literals and statement order still count.
    """
    try:
        tree = parse(source.replace("\r\n", "\n"))
    except (SyntaxError, ValueError):  # ValueError: source with NUL bytes
        return None
    return ast.unparse(_strip_docstrings(tree))


def programs_match(program: str, reference: str) -> bool:
    """True when the programs are the same after normalisation.

    When both parse, their :func:`canonical_ast` forms are compared (so comments and docstrings are
    ignored). Otherwise the texts are compared with every whitespace run collapsed to one space
    (comments then still count: without a parse they cannot be told apart from code reliably).
    """
    a, b = canonical_ast(program), canonical_ast(reference)
    if a is not None and b is not None:
        return a == b
    return _collapse_whitespace(program) == _collapse_whitespace(reference)


class ExactMatch(SumStateMetric):
    """Fraction of problems whose chosen program matches any reference solution (:func:`programs_match`).

    ``update(predictions, references)``: one program and one list of reference solutions per problem.
    Problems with no reference solution are not counted (``num_unreferenced`` tracks them); with no
    referenced problem at all :meth:`compute` is NaN.
    """

    higher_is_better = True

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.add_state("num_matched", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_referenced", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("num_unreferenced", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, predictions: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if isinstance(predictions, str):
            raise TypeError("predictions must be a sequence of programs (one per problem), not one string")
        if len(predictions) != len(references):
            raise ValueError(f"got {len(predictions)} predictions but {len(references)} reference lists")
        for program, refs in zip(predictions, references):
            if not refs:
                self.num_unreferenced += 1
                continue
            self.num_referenced += 1
            self.num_matched += int(any(programs_match(program, ref) for ref in refs))

    def compute(self) -> torch.Tensor:
        if int(self.num_referenced) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.num_matched.double() / self.num_referenced
