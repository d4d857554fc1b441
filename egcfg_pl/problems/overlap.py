"""Train / held-out overlap: the same problem must not be trained on and then evaluated.

Two problems are the same when any of these agree:

- the id, with sanitized MBPP's task numbers read as MBPP's (``mbpp_sanitized/11`` is ``mbpp/11``: the
  sanitized set is a hand-edited subset of MBPP that keeps the task ids but rewrites many statements);
- the normalised statement (MBPP repeats a few statements under different task ids);
- the set of test asserts, compared as parsed code, when the asserts call something (``assert 1`` tests no
  particular problem). This catches copies whose statement was rewritten and whose id was renumbered.
"""

from __future__ import annotations

import ast
import re
import string
import warnings
from collections.abc import Sequence

from egcfg_pl.ast_parse import parse
from egcfg_pl.problems.problem import Problem

MAX_NAMED = 5
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")
SAME_TASK_NUMBERS = {"mbpp_sanitized": "mbpp"}
"""Id prefixes whose task numbers are another dataset's (sanitized MBPP keeps MBPP's ``task_id``)."""


class OverlapError(ValueError):
    """Training problems also appear in a held-out set."""


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: spacing and quoting changes do not hide a copy."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def canonical_id(problem_id: str) -> str:
    """The id with aliased dataset prefixes folded (``mbpp_sanitized/11`` -> ``mbpp/11``)."""
    prefix, sep, rest = problem_id.partition("/")
    return f"{SAME_TASK_NUMBERS.get(prefix, prefix)}{sep}{rest}"


def _statement_key(problem: Problem) -> str:
    # The statement is the problem text for every dataset (HumanEval's is its prompt); the prompt
    # alone is compared only when there is no statement, since starter code is often shared.
    return normalize_text(problem.statement or problem.prompt)


def _assert_key(code: str) -> str | None:
    """The assert as canonical code (spacing and quoting do not matter); None when it calls nothing."""
    try:
        with warnings.catch_warnings():  # old MBPP asserts have invalid escape sequences
            warnings.simplefilter("ignore")
            tree = parse(code)
    except SyntaxError:
        return _SPACE.sub("", code)
    if not any(isinstance(node, ast.Call) for node in ast.walk(tree)):
        return None
    return ast.unparse(tree)


def _tests_key(problem: Problem) -> frozenset[str] | None:
    keys = {_assert_key(t.code) for t in problem.tests if t.kind == "assert"} - {None}
    return frozenset(keys) or None


def _keys(problem: Problem) -> list[tuple[str, object]]:
    keys: list[tuple[str, object]] = [("id", canonical_id(problem.id))]
    if text := _statement_key(problem):
        keys.append(("statement", text))
    if tests := _tests_key(problem):
        keys.append(("tests", tests))
    return keys


def check_overlap(train: Sequence[Problem], held_out: Sequence[Problem], allow: bool = False) -> list[tuple[str, str]]:
    """Every (train id, held-out id) pair that is the same problem: same id (MBPP task numbers shared with
    sanitized MBPP), same normalised statement, or the same test asserts.

    Raises :class:`OverlapError` naming up to five held-out problems unless ``allow`` is true.
    """
    index: dict[tuple[str, object], list[str]] = {}
    for p in train:
        for key in _keys(p):
            index.setdefault(key, []).append(p.id)
    pairs: list[tuple[str, str]] = []
    matched: dict[str, list[str]] = {}
    for q in held_out:
        found = dict.fromkeys(train_id for key in _keys(q) for train_id in index.get(key, ()))  # ordered, unique
        pairs += [(train_id, q.id) for train_id in found]
        if found:
            matched[q.id] = list(found)
    if pairs and not allow:
        named = ", ".join(f"{' / '.join(ids)} ~ {q}" for q, ids in list(matched.items())[:MAX_NAMED])
        more = f" and {len(matched) - MAX_NAMED} more" if len(matched) > MAX_NAMED else ""
        raise OverlapError(
            f"{len(matched)} held-out problem(s) also appear in the training problems (same id, statement or "
            f"test asserts; sanitized MBPP shares MBPP's task numbers): {named}{more}. Use disjoint splits, set "
            "`data.drop_overlapping_train: true` to train without the overlapping problems, or set "
            "`data.allow_overlap: true` to accept the overlap knowingly."
        )
    return pairs
