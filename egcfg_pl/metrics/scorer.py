"""``CandidateScorer``: run candidates through an executor batch by batch, accumulating metrics and reports.

Both ``evaluate_candidates`` (one shot, e.g. a samples file) and the Lightning held-out evaluation
(one dataloader batch at a time, DDP) feed it; ``report()`` turns what it saw into an ``EvalReport``.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from typing import Any, NamedTuple

from egcfg_pl.metrics.collection import CodeGenMetrics, first_candidate_index
from egcfg_pl.metrics.report import EvalReport, ProblemReport, ProgramRunner, group_by_problem
from egcfg_pl.problems.problem import Problem
from egcfg_pl.sampling.candidate import Candidate, PossibilityForm
from egcfg_pl.sandbox.verdict import Verdict


class Scored(NamedTuple):
    """What one problem added to the metrics (kept so the metrics can be recounted, see ``keep_only``)."""

    problem: Problem
    candidates: list[Candidate]
    verdicts: list[Verdict]
    gen_seconds: float
    gen_tokens: int


class CandidateScorer:
    def __init__(
        self,
        executor: ProgramRunner,
        ks: Iterable[int] = (1, 10, 100),
        p2value_alpha: float = 0.5,
        possibility_form: PossibilityForm = "normalized",
    ) -> None:
        self.executor = executor
        self.possibility_form = possibility_form
        self.metrics = CodeGenMetrics(ks, p2value_alpha=p2value_alpha, possibility_form=possibility_form)
        self.problems: list[ProblemReport] = []
        self.unscored: list[str] = []
        self.scored: list[Scored] = []

    def score(
        self,
        problems: Sequence[Problem],
        candidates: Iterable[Candidate],
        gen_seconds: float = 0.0,
        allow_missing: bool = False,
    ) -> list[ProblemReport]:
        """Test every candidate (one ``run_many`` call) and add the problems to the metrics.

        ``gen_seconds`` (the generation time of this batch) is shared among problems by token count.
        """
        groups, missing = group_by_problem(problems, candidates, allow_missing)
        self.unscored += missing
        by_id = {p.id: p for p in problems}
        jobs = [(by_id[pid], cand.program) for pid, group in groups.items() for cand in group]
        verdicts = list(self.executor.run_many(jobs))
        if len(verdicts) != len(jobs):
            raise RuntimeError(f"executor returned {len(verdicts)} verdicts for {len(jobs)} programs")
        total_tokens = max(sum(c.num_tokens for group in groups.values() for c in group), 1)
        reports, start = [], 0
        for pid, group in groups.items():
            group_verdicts = verdicts[start : start + len(group)]
            start += len(group)
            tokens = sum(c.num_tokens for c in group)
            record = Scored(by_id[pid], list(group), list(group_verdicts), gen_seconds * tokens / total_tokens, tokens)
            self.metrics.update(*record)
            self.scored.append(record)
            first = first_candidate_index(group)
            reports.append(ProblemReport.build(by_id[pid], group, group_verdicts, first, self.possibility_form))
        self.problems += reports
        return reports

    def keep_only(self, problem_ids: Collection[str]) -> None:
        """Recount the metrics and per-problem records over these problem ids only (the first record of each).

        Under DDP, Lightning's ``DistributedSampler`` repeats a few problems to even out the ranks; each
        problem must be counted by exactly one rank for the synced sums to match the de-duplicated report.
        """
        keep, seen, kept, reports = set(problem_ids), set(), [], []
        for record, report in zip(self.scored, self.problems):
            pid = record.problem.id
            if pid in keep and pid not in seen:
                seen.add(pid)
                kept.append(record)
                reports.append(report)
        if len(kept) == len(self.scored):
            return
        self.metrics.reset()
        for record in kept:
            self.metrics.update(*record)
        self.scored, self.problems = kept, reports

    def compute(self) -> dict[str, float]:
        """Metrics over everything scored (DDP-synced by torchmetrics when a process group is up)."""
        return self.metrics.compute()

    def report(self, config: dict[str, Any] | None = None, problems: list[ProblemReport] | None = None) -> EvalReport:
        problems = self.problems if problems is None else problems
        return EvalReport(
            metrics=self.compute(),
            problems=problems,
            config=dict(config or {}),
            histograms=self.metrics.histograms(),
            bin_edges=self.metrics.bin_edges,
            missing_ks=list(self.metrics.missing_ks()),
            unscored_problem_ids=list(self.unscored),
            truncated_candidates=sum(p.truncated for p in problems),
        )

    def reset(self) -> None:
        self.metrics.reset()
        self.problems, self.unscored, self.scored = [], [], []


def evaluate_candidates(
    problems: Sequence[Problem],
    candidates: Iterable[Candidate],
    executor: ProgramRunner,
    ks: Iterable[int] = (1, 10, 100),
    *,
    allow_missing: bool = False,
    p2value_alpha: float = 0.5,
    possibility_form: PossibilityForm = "normalized",
    config: dict[str, Any] | None = None,
) -> EvalReport:
    """Run every candidate through ``executor.run_many`` (one batch) and score them with :class:`CodeGenMetrics`.

    Problems without candidates raise (listing their ids) unless ``allow_missing``; they are then
    left out of the metrics and listed in ``EvalReport.unscored_problem_ids``.
    """
    scorer = CandidateScorer(executor, ks, p2value_alpha=p2value_alpha, possibility_form=possibility_form)
    scorer.score(problems, candidates, allow_missing=allow_missing)
    return scorer.report(config)
