"""Condense a held-out evaluation JSON (``eval_test_epoch0.json``) into a small record worth committing.

``python -m benchmarks.eval_summary RESULTS_JSON OUT_JSON [--command "..."]`` keeps the metrics, the
command, and one row per problem (id, candidates, passing candidates, mean test pass rate); the programs
themselves stay in the full file. ``make bench-eval`` runs the two full greedy evaluations of the embedded
model (HumanEval 164, MBPP test 500) and writes their summaries to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
from pathlib import Path


def summarise(path: Path, command: str) -> dict:
    data = json.loads(path.read_text())
    problems = data["problems"]
    return {
        "command": command,
        "source": str(path),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "config": data.get("config", {}),
        "metrics": data["metrics"],
        "solved": [p["problem_id"] for p in problems if p["c"] > 0],
        "problems": [[p["problem_id"], p["n"], p["c"], round(p["mean_pass_rate"], 4)] for p in problems],
        "problems_columns": ["problem_id", "n", "c", "mean_pass_rate"],
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
          f"avg pass rate {m.get('avg_pass_rate', float('nan')):.4f}, solved {len(record['solved'])}")


if __name__ == "__main__":
    main()
