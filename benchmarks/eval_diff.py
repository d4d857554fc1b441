"""Explain, problem by problem, why a held-out evaluation changed between an old and a new version of the code.

``python -m benchmarks.eval_diff --dataset humaneval --old-summary OLD.json --new-summary NEW.json
--old-tree /path/to/old/checkout --out benchmarks/results/eval_diff_humaneval.json``

Two summaries of ``benchmarks.eval_summary`` (old: per-problem verdicts only; new: with each candidate's raw text)
differ for three reasons at once: the model generated different text, extraction turned the text into a different
program, or the sandbox judged the same program differently. The new raw text is re-scored through a chain of
pipelines, each changing one thing, so every step of a change has one cause:

=====  =====================================================  =======================================
stage  pipeline                                               change from the previous stage
=====  =====================================================  =======================================
S0     old summary (old text, old extraction, old sandbox)    --
S1     new text, OLD extraction, OLD sandbox                  generation (the text differs)
S2     new program (new extraction), OLD sandbox              extraction
S3     new program, NEW sandbox, per-test budget only         sandbox: comparison / test process
S4     new program, NEW sandbox, whole-check budget (rerun)   the official whole-check time budget
S5     new summary (the verdict the run recorded)             timing noise between S4 and the run
=====  =====================================================  =======================================

The old stages run in a subprocess with the old checkout first on ``sys.path`` (checked: it refuses to run when
``egcfg_pl`` is imported from anywhere else). S0 → S1 can only be told apart by the verdict (the old summaries keep
no text), so a timing-dependent old verdict would show as a generation change; S4 vs S5 shows that noise for the
new sandbox. Writes one record per problem whose verdict or mean pass rate changed at any stage, and counts.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

STAGES = ("S0", "S1", "S2", "S3", "S4", "S5")
CAUSES = {"S1": "generation", "S2": "extraction", "S3": "sandbox comparison", "S4": "whole-check budget",
          "S5": "timing noise"}
RATE_TOLERANCE = 1e-3  # the old summaries round pass rates to 4 digits

# Runs inside the old checkout: old load_problems, old extract_program, old Executor (its config had timeout=3.0).
OLD_SIDE = r"""
import json, sys
from pathlib import Path
import egcfg_pl
from egcfg_pl.problems.loader import load_problems
from egcfg_pl.prompts import PromptTemplate, extract_program
from egcfg_pl.sandbox import Executor, SandboxConfig

job = json.loads(Path(sys.argv[1]).read_text())
if not Path(egcfg_pl.__file__).resolve().is_relative_to(Path(job["old_tree"]).resolve()):
    sys.exit(f"imported {egcfg_pl.__file__}, not the old checkout {job['old_tree']}")
problems = {p.id: p for p in load_problems(job["dataset"], split="test", path=job["path"])}
template = PromptTemplate()
rows = job["rows"]
old_programs = [extract_program(r["text"], problems[r["problem_id"]], template) for r in rows]
with Executor(SandboxConfig(timeout=3.0)) as ex:
    s1 = ex.run_many([(problems[r["problem_id"]], prog) for r, prog in zip(rows, old_programs)])
    s2 = ex.run_many([(problems[r["problem_id"]], r["program"]) for r in rows])
def verdict(v):
    return {"passed": v.all_passed, "pass_rate": v.pass_rate, "statuses": [r.status.value for r in v.results],
            "details": [r.detail[:160] for r in v.results if r.status.value != "passed"][:3]}
out = [{"old_program": prog, "S1": verdict(a), "S2": verdict(b)} for prog, a, b in zip(old_programs, s1, s2)]
Path(sys.argv[2]).write_text(json.dumps({"egcfg_pl": egcfg_pl.__file__, "rows": out}))
"""


def verdict_record(v) -> dict:
    return {"passed": v.all_passed, "pass_rate": v.pass_rate, "statuses": [r.status.value for r in v.results],
            "details": [r.detail[:160] for r in v.results if r.status.value != "passed"][:3]}


def candidate_rows(new_summary: dict) -> list[dict]:
    """One row per candidate of the new summary: problem id, raw text, the program the run extracted and judged."""
    rows = []
    for pid, _n, _c, _rate, _trunc, candidates in new_summary["problems"]:
        for program, passed, truncated, text in candidates:
            rows.append({"problem_id": pid, "text": text, "program": program, "passed": passed,
                         "truncated": truncated})
    return rows


def run_old_side(dataset: str, rows: list[dict], old_tree: Path, path: str | None) -> dict:
    """S1 and S2 from the old checkout, in its own interpreter so nothing of the new code is imported."""
    with tempfile.TemporaryDirectory() as tmp:
        job, out = Path(tmp, "job.json"), Path(tmp, "out.json")
        job.write_text(json.dumps({"dataset": dataset, "rows": rows, "old_tree": str(old_tree), "path": path}))
        env = {**os.environ, "PYTHONPATH": str(old_tree), "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", OLD_SIDE, str(job), str(out)], cwd=old_tree, env=env, check=True)
        return json.loads(out.read_text())


def run_new_side(dataset: str, rows: list[dict]) -> tuple[list[str], list[dict], list[dict]]:
    """New extraction of the raw text (must reproduce the recorded program), then S3 and S4."""
    from egcfg_pl.problems.loader import load_problems
    from egcfg_pl.prompts import PromptTemplate, extract_program
    from egcfg_pl.sandbox import Executor, SandboxConfig

    problems = {p.id: p for p in load_problems(dataset, split="test")}
    programs = [extract_program(r["text"], problems[r["problem_id"]], PromptTemplate()) for r in rows]
    jobs = [(problems[r["problem_id"]], r["program"]) for r in rows]
    with Executor(SandboxConfig(timeout=3.0)) as ex:
        s3 = [verdict_record(v) for v in ex.run_many(jobs)]
    with Executor(SandboxConfig(timeout=3.0, check_timeout=3.0)) as ex:
        s4 = [verdict_record(v) for v in ex.run_many(jobs)]
    return programs, s3, s4


def problem_stages(old_summary: dict, new_summary: dict, rows: list[dict], old: list[dict], s3, s4) -> dict:
    """Per problem and stage: (solved = some candidate passes, mean pass rate)."""
    by_pid: dict[str, dict[str, list]] = {}
    for row, o, v3, v4 in zip(rows, old, s3, s4):
        stages = by_pid.setdefault(row["problem_id"], {s: [] for s in STAGES[1:5]})
        for stage, v in zip(STAGES[1:5], (o["S1"], o["S2"], v3, v4)):
            stages[stage].append(v)
    out = {}
    old_rows = {r[0]: r for r in old_summary["problems"]}
    for pid, _n, c, rate, _t, _cands in new_summary["problems"]:
        _, _, c0, rate0 = old_rows[pid][:4]
        stage = {"S0": (c0 > 0, rate0)}
        for s, verdicts in by_pid[pid].items():
            stage[s] = (any(v["passed"] for v in verdicts), sum(v["pass_rate"] for v in verdicts) / len(verdicts))
        stage["S5"] = (c > 0, rate)
        out[pid] = stage
    return out


def changes(stage: dict) -> tuple[list[str], list[str]]:
    """Causes of a solved/unsolved flip and of a pass-rate change (each stage compared with the one before)."""
    flips, rates = [], []
    for prev, cur in zip(STAGES, STAGES[1:]):
        if stage[prev][0] != stage[cur][0]:
            flips.append(f"{CAUSES[cur]} ({'+' if stage[cur][0] else '-'})")
        if abs(stage[prev][1] - stage[cur][1]) > RATE_TOLERANCE:
            rates.append(CAUSES[cur])
    return flips, rates


def diff(args: argparse.Namespace) -> dict:
    old_summary = json.loads(Path(args.old_summary).read_text())
    new_summary = json.loads(Path(args.new_summary).read_text())
    rows = candidate_rows(new_summary)
    if len(rows) != len(new_summary["problems"]):
        raise SystemExit("eval_diff compares greedy runs: one candidate per problem")
    old_side = run_old_side(args.dataset, rows, Path(args.old_tree), args.old_path)
    new_programs, s3, s4 = run_new_side(args.dataset, rows)
    mismatched = [r["problem_id"] for r, p in zip(rows, new_programs) if p != r["program"]]
    stages = problem_stages(old_summary, new_summary, rows, old_side["rows"], s3, s4)
    records, flip_counts, rate_counts = [], Counter(), Counter()
    for i, (pid, stage) in enumerate(stages.items()):
        flips, rates = changes(stage)
        flip_counts.update(flips)
        rate_counts.update(rates)
        if not (flips or rates):
            continue
        row, old = rows[i], old_side["rows"][i]  # greedy: one candidate per problem, in the same order
        records.append({
            "problem_id": pid,
            "flips": flips,
            "rate_changes": rates,
            "stages": {s: {"solved": v[0], "mean_pass_rate": round(v[1], 4)} for s, v in stage.items()},
            "programs_differ": old["old_program"] != row["program"],
            "truncated": row["truncated"],
            "verdicts": {"S1": old["S1"], "S2": old["S2"], "S3": s3[i], "S4": s4[i]},
            "old_program": old["old_program"],
            "new_program": row["program"],
            "text": row["text"],
        })
    solved = {s: sum(stage[s][0] for stage in stages.values()) for s in STAGES}
    mean_rate = {s: round(sum(stage[s][1] for stage in stages.values()) / len(stages), 4) for s in STAGES}
    return {
        "dataset": args.dataset,
        "old_summary": args.old_summary,
        "new_summary": args.new_summary,
        "old_code": old_side["egcfg_pl"],
        "stages": {s: (CAUSES.get(s, "old summary")) for s in STAGES},
        "solved_per_stage": solved,
        "avg_pass_rate_per_stage": mean_rate,
        "flips_by_cause": dict(flip_counts),
        "rate_changes_by_cause": dict(rate_counts),
        "new_extraction_mismatches": mismatched,
        "extraction_differs": [
            r["problem_id"] for r, o in zip(rows, old_side["rows"]) if o["old_program"] != r["program"]
        ],
        "changed": records,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("humaneval", "mbpp"), required=True)
    parser.add_argument("--old-summary", required=True)
    parser.add_argument("--new-summary", required=True)
    parser.add_argument("--old-tree", required=True, help="a checkout of the old code (git worktree)")
    parser.add_argument("--old-path", default=None, help="dataset file for the old loader (MBPP: mbpp.jsonl)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    record = diff(args)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")
    print(f"{args.out}: solved per stage {record['solved_per_stage']}, "
          f"avg pass rate {record['avg_pass_rate_per_stage']}")
    print(f"flips by cause {record['flips_by_cause']}; rate changes by cause {record['rate_changes_by_cause']}")
    print(f"{len(record['changed'])} problems changed; old and new extraction differ on "
          f"{len(record['extraction_differs'])}; new extraction mismatches: {record['new_extraction_mismatches']}")


if __name__ == "__main__":
    main()
