"""Code-generation metrics (torchmetrics, DDP-safe) and the evaluation report."""

from egcfg_pl.metrics.collection import CodeGenMetrics, first_candidate_index
from egcfg_pl.metrics.exact_match import ExactMatch, canonical_ast, programs_match
from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.metrics.pass_at_k import PassAtK, estimate_pass_at_k
from egcfg_pl.metrics.pass_rate import AveragePassRate, StrictAccuracy
from egcfg_pl.metrics.report import CandidateReport, EvalReport, ProblemReport
from egcfg_pl.metrics.scorer import evaluate_candidates
from egcfg_pl.metrics.rsr import relative_success_rate
from egcfg_pl.metrics.runtime import GenerationThroughput, RuntimeEfficiency

__all__ = [
    "AveragePassRate",
    "CandidateReport",
    "CodeGenMetrics",
    "EvalReport",
    "ExactMatch",
    "GenerationThroughput",
    "P2ValueMetric",
    "PassAtK",
    "ProblemReport",
    "RuntimeEfficiency",
    "StrictAccuracy",
    "canonical_ast",
    "estimate_pass_at_k",
    "evaluate_candidates",
    "first_candidate_index",
    "programs_match",
    "relative_success_rate",
]
