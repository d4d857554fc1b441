"""Train / held-out overlap: the same problem must not be trained on and then evaluated."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

from egcfg_pl.problems.problem import Problem

MAX_NAMED = 5
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_SPACE = re.compile(r"\s+")


class OverlapError(ValueError):
    """Training problems also appear in a held-out set."""


def normalize_text(text: str) -> str:
    """Lowercase, punctuation removed, whitespace collapsed: spacing and quoting changes do not hide a copy."""
    return _SPACE.sub(" ", _PUNCT.sub(" ", text.lower())).strip()


def _key(problem: Problem) -> str:
    # The statement is the problem text for every dataset (HumanEval's is its prompt); the prompt
    # alone is compared only when there is no statement, since starter code is often shared.
    return normalize_text(problem.statement or problem.prompt)


def check_overlap(train: Sequence[Problem], held_out: Sequence[Problem], allow: bool = False) -> list[tuple[str, str]]:
    """(train id, held-out id) pairs with the same id or the same normalised statement.

    Raises :class:`OverlapError` naming up to five pairs unless ``allow`` is true.
    """
    by_id = {p.id: p.id for p in train}
    by_text: dict[str, str] = {}
    for p in train:
        by_text.setdefault(_key(p), p.id)
    pairs: list[tuple[str, str]] = []
    for q in held_out:
        text = _key(q)
        match = by_id.get(q.id) or (by_text.get(text) if text else None)
        if match is not None:
            pairs.append((match, q.id))
    if pairs and not allow:
        named = ", ".join(f"{a} ~ {b}" for a, b in pairs[:MAX_NAMED])
        more = f" and {len(pairs) - MAX_NAMED} more" if len(pairs) > MAX_NAMED else ""
        raise OverlapError(
            f"{len(pairs)} held-out problem(s) also appear in the training problems (same id or statement): "
            f"{named}{more}. Use disjoint splits, set `data.drop_overlapping_train: true` to train without the "
            "overlapping problems (run.drop_overlapping_train in an experiment config), or set "
            "`data.allow_overlap: true` to accept the overlap knowingly."
        )
    return pairs
