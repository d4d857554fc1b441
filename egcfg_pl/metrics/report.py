"""The JSON results file (metrics + per-problem details) and its records; ``scorer.py`` fills them."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.metrics.exact_match import programs_match
from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.candidate import Candidate, PossibilityForm
from egcfg_pl.sandbox.verdict import Verdict


class ProgramRunner(Protocol):
    """What :func:`evaluate_candidates` needs from an executor (``egcfg_pl.sandbox.Executor``)."""

    def run_many(self, jobs: Sequence[tuple[Problem, str]]) -> list[Verdict]: ...


@dataclass
class CandidateReport:
    """One candidate's program and what the sandbox said about it."""

    program: str
    statuses: list[str]  # one Status value per test
    pass_rate: float
    passed: bool  # all tests passed
    seconds: float
    logprob: float | None
    possibility: float | None
    num_tokens: int
    rank: int
    truncated: bool = False  # the generation ran out of its token budget (``Candidate.truncated``)
    text: str = ""  # the raw generation the program was extracted from (to re-extract and re-score it)
    logprob_scope: str = "reply"  # what logprob covers (``Candidate.logprob_scope``)


@dataclass
class ProblemReport:
    """Per-problem record of a results file: ``n`` candidates, ``c`` of them pass every test."""

    problem_id: str
    n: int
    c: int
    mean_pass_rate: float
    exact_match: bool | None  # first candidate vs. references; None when the problem has none
    candidates: list[CandidateReport]
    truncated: int = 0  # candidates that ran out of their token budget

    @classmethod
    def build(
        cls,
        problem: Problem,
        candidates: Sequence[Candidate],
        verdicts: Sequence[Verdict],
        first: int,
        possibility_form: PossibilityForm = "normalized",
    ) -> ProblemReport:
        reports = [
            CandidateReport(
                program=cand.program,
                statuses=[r.status.value for r in verdict.results],
                pass_rate=verdict.pass_rate,
                passed=verdict.all_passed,
                seconds=verdict.seconds,
                logprob=cand.logprob,
                possibility=cand.possibility(possibility_form),
                num_tokens=cand.num_tokens,
                rank=cand.rank,
                truncated=cand.truncated,
                text=cand.text,
                logprob_scope=cand.logprob_scope,
            )
            for cand, verdict in zip(candidates, verdicts)
        ]
        matched = None
        if problem.solutions:
            matched = any(programs_match(candidates[first].program, ref) for ref in problem.solutions)
        return cls(
            problem_id=problem.id,
            n=len(reports),
            c=sum(r.passed for r in reports),
            mean_pass_rate=sum(r.pass_rate for r in reports) / len(reports),
            exact_match=matched,
            candidates=reports,
            truncated=sum(r.truncated for r in reports),
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProblemReport:
        data = dict(data)
        data["candidates"] = [CandidateReport(**c) for c in data["candidates"]]
        return cls(**data)


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN / inf: write them as null (read back as NaN by :meth:`EvalReport.from_json`)."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass
class EvalReport:
    """What an evaluation writes: metrics, per-problem records, and the config that produced them."""

    metrics: dict[str, float]
    problems: list[ProblemReport]
    config: dict[str, Any] = field(default_factory=dict)
    histograms: dict[str, list[int]] = field(default_factory=dict)  # p2value / possibility / pass_rate
    bin_edges: list[float] = field(default_factory=list)  # the histograms' bins on [0, 1]
    missing_ks: list[int] = field(default_factory=list)  # pass@k left out: some problem has n < k
    unscored_problem_ids: list[str] = field(default_factory=list)  # problems without candidates
    truncated_candidates: int = 0  # candidates (over all problems) that ran out of their token budget

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["metrics"] = {k: _finite_or_none(v) for k, v in self.metrics.items()}
        return data

    def to_json(self, path: str | Path) -> Path:
        """Write atomically (temp file in the same folder, then ``os.replace``); returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n")

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        data["metrics"] = {k: math.nan if v is None else float(v) for k, v in data["metrics"].items()}
        data["problems"] = [ProblemReport.from_dict(p) for p in data["problems"]]
        return cls(**data)


def group_by_problem(
    problems: Sequence[Problem], candidates: Iterable[Candidate], allow_missing: bool = False
) -> tuple[dict[str, list[Candidate]], list[str]]:
    """Candidates per problem id (in problem order) and the ids of problems without any candidate.

    Candidates of unknown problems always raise; problems without candidates raise unless
    ``allow_missing`` (they are then left out of every metric, not counted as failures).
    """
    groups: dict[str, list[Candidate]] = {p.id: [] for p in problems}
    unknown = []
    for cand in candidates:
        if cand.problem_id in groups:
            groups[cand.problem_id].append(cand)
        else:
            unknown.append(cand.problem_id)
    if unknown:
        raise ValueError(f"candidates name problems that were not given: {sorted(set(unknown))[:20]}")
    missing = [pid for pid, group in groups.items() if not group]
    if missing and not allow_missing:
        raise ValueError(
            f"{len(missing)} problem(s) have no candidates: {missing[:20]}. Sample them, drop them from "
            "`problems`, or pass allow_missing=True to leave them out of the metrics."
        )
    return {pid: group for pid, group in groups.items() if group}, missing

