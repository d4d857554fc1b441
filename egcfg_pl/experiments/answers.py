"""The greedy answer of every held-out problem, per variant and set, in a compact file anyone can re-score.

The evaluation JSON under ``runs/<key>/eval/<set>/`` holds it among much else; ``answers/<set>/<variant>.jsonl``
keeps one line per problem: ``problem_id``, ``program`` (the first candidate: the greedy one), ``passed`` (every
test passed), ``pass_rate`` and the per-test ``statuses``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.metrics.report import EvalReport


def answer_lines(eval_json: str | Path) -> list[dict[str, Any]]:
    rows = []
    for problem in EvalReport.from_json(eval_json).problems:
        first = problem.candidates[0] if problem.candidates else None
        rows.append({
            "problem_id": problem.problem_id,
            "program": first.program if first else None,
            "passed": bool(first.passed) if first else False,
            "pass_rate": first.pass_rate if first else 0.0,
            "statuses": list(first.statuses) if first else [],
        })
    return rows


def write_answers(root: Path, variant: str, evaluations: dict[str, dict[str, Any]]) -> list[Path]:
    """``root/<set>/<variant>.jsonl`` for each evaluated set."""
    paths = []
    for name, evaluation in evaluations.items():
        text = "".join(json.dumps(row) + "\n" for row in answer_lines(evaluation["eval_json"]))
        paths.append(atomic_write_text(Path(root) / name / f"{variant}.jsonl", text))
    return paths
