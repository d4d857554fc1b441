"""Condense a held-out evaluation JSON (``eval_test_epoch0.json``) into a record worth committing.

``python -m benchmarks.eval_summary RESULTS_JSON OUT_JSON [--command "..."]`` keeps the metrics, the
command, and one row per problem: id, candidates, passing candidates, mean test pass rate, truncated candidates,
and each candidate's program, whether it passed, whether it was truncated (ran out of its token budget) and the
raw generation it was extracted from, so two runs can be compared problem by problem and anyone can re-score
the programs (or re-extract them from the raw text). ``make bench-eval`` runs the two full greedy evaluations
of the embedded model (HumanEval 164, MBPP test 500) and writes their summaries to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path

PROBLEM_COLUMNS = ["problem_id", "n", "c", "mean_pass_rate", "truncated", "candidates"]
CANDIDATE_COLUMNS = ["program", "passed", "truncated", "text"]


def candidate_row(candidate: dict) -> list:
    """Program, passed, truncated, raw text (files written before ``truncated`` / ``text`` existed: False / "")."""
    return [candidate["program"], candidate["passed"], candidate.get("truncated", False), candidate.get("text", "")]


def problem_row(problem: dict) -> list:
    rows = [candidate_row(c) for c in problem["candidates"]]
    truncated = sum(row[2] for row in rows)
    return [problem["problem_id"], problem["n"], problem["c"], round(problem["mean_pass_rate"], 4), truncated, rows]


def summarise(path: Path, command: str) -> dict:
    data = json.loads(path.read_text())
    problems = data["problems"]
    rows = [problem_row(p) for p in problems]
    return {
        "command": command,
        "source": str(path),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "config": data.get("config", {}),
        "metrics": data["metrics"],
        "truncated_candidates": sum(row[4] for row in rows),
        "solved": [p["problem_id"] for p in problems if p["c"] > 0],
        "problems": rows,
        "problems_columns": PROBLEM_COLUMNS,
        "candidates_columns": CANDIDATE_COLUMNS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--command", default="")
    args = parser.parse_args()
    record = summarise(args.results, args.command)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    m = record["metrics"]
    print(f"{args.out}: {len(record['problems'])} problems, pass@1 {m.get('pass@1', float('nan')):.4f}, "
          f"avg pass rate {m.get('avg_pass_rate', float('nan')):.4f}, solved {len(record['solved'])}, "
          f"truncated candidates {record['truncated_candidates']}")


if __name__ == "__main__":
    main()
