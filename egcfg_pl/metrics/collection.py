"""``CodeGenMetrics``: every code-generation metric of one split, fed one problem at a time."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from egcfg_pl.metrics.exact_match import ExactMatch
from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.metrics.pass_at_k import PassAtK
from egcfg_pl.metrics.pass_rate import AveragePassRate, StrictAccuracy
from egcfg_pl.metrics.runtime import GenerationThroughput, RuntimeEfficiency
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.experience import p2value
from egcfg_pl.sampling.candidate import POSSIBILITY_FORMS, Candidate, PossibilityForm
from egcfg_pl.sandbox.verdict import Verdict


def first_candidate_index(candidates: Sequence[Candidate]) -> int:
    """Index of the problem's "first" answer: the lowest ``rank`` (greedy / best beam), earliest on ties."""
    return min(range(len(candidates)), key=lambda i: candidates[i].rank)


def _check_group(problem: Problem, candidates: Sequence[Candidate], verdicts: Sequence[Verdict]) -> None:
    if not candidates:
        raise ValueError(f"problem {problem.id!r} has no candidates; pass@k needs at least one")
    if len(candidates) != len(verdicts):
        raise ValueError(f"problem {problem.id!r}: {len(candidates)} candidates but {len(verdicts)} verdicts")
    stray = {x.problem_id for x in (*candidates, *verdicts)} - {problem.id}
    if stray:
        raise ValueError(f"problem {problem.id!r} was given candidates/verdicts of other problems: {sorted(stray)}")


class CodeGenMetrics(nn.Module):
    """One object per split (train / val / test) holding all metrics as torchmetrics children.

    ``update`` takes one problem with all its candidates and their verdicts; ``compute`` returns
    plain floats (DDP-synced by each child metric) with these keys:

    - ``pass@k`` for each k in ``ks`` that no problem has fewer samples than (others are missing,
      see :meth:`missing_ks`); unbiased estimator of Chen et al. 2021;
    - ``avg_pass_rate`` (over candidates), ``avg_pass_rate_macro`` (over problems);
    - ``strict_accuracy``: first candidate (lowest rank) passes every test;
    - ``exact_match``: first candidate equals a reference solution after normalisation
      (NaN when no problem has a reference);
    - ``runtime_s``: mean execution seconds of the passing programs (NaN when none pass);
    - ``tokens_per_s``: generated tokens / generation seconds (NaN without timings);
    - ``p2value_mean`` and ``possibility_mean`` (BTP Eq. 5 with ``p2value_alpha``; NaN possibility
      when the source gave no log-probs);
    - ``num_problems``, ``num_candidates``.
    """

    def __init__(
        self,
        ks: Iterable[int] = (1, 5, 10),
        p2value_alpha: float = 0.5,
        possibility_form: PossibilityForm = "normalized",
        num_bins: int = 10,
    ) -> None:
        super().__init__()
        if possibility_form not in POSSIBILITY_FORMS:
            raise ValueError(f"possibility_form {possibility_form!r} is unknown; use one of {POSSIBILITY_FORMS}")
        p2value(None, 0.0, p2value_alpha)  # validates alpha now rather than at the first update
        self.p2value_alpha = p2value_alpha
        self.possibility_form = possibility_form
        self.pass_at_k = PassAtK(ks)
        self.pass_rate = AveragePassRate()
        self.strict_accuracy = StrictAccuracy()
        self.exact_match = ExactMatch()
        self.runtime = RuntimeEfficiency()
        self.throughput = GenerationThroughput()
        self.p2value = P2ValueMetric(num_bins)

    @property
    def ks(self) -> tuple[int, ...]:
        return self.pass_at_k.ks

    def update(
        self,
        problem: Problem,
        candidates: Sequence[Candidate],
        verdicts: Sequence[Verdict],
        gen_seconds: float = 0.0,
        gen_tokens: int = 0,
    ) -> None:
        """Add one problem: its candidates, their verdicts (same order), and the generation cost."""
        _check_group(problem, candidates, verdicts)
        passed = torch.tensor([v.all_passed for v in verdicts])
        rates = torch.tensor([v.pass_rate for v in verdicts], dtype=torch.float64)
        first = first_candidate_index(candidates)
        possibilities = [c.possibility(self.possibility_form) for c in candidates]
        p2values = [p2value(p, float(r), self.p2value_alpha) for p, r in zip(possibilities, rates)]

        self.pass_at_k.update(len(candidates), int(passed.sum()))
        self.pass_rate.update(rates)
        self.strict_accuracy.update(bool(passed[first]))
        self.exact_match.update([candidates[first].program], [problem.solutions])
        self.runtime.update(torch.tensor([v.seconds for v in verdicts], dtype=torch.float64), passed)
        self.throughput.update(gen_tokens, gen_seconds)
        self.p2value.update(
            torch.tensor(p2values, dtype=torch.float64),
            torch.tensor([math.nan if p is None else p for p in possibilities], dtype=torch.float64),
            rates,
        )

    def compute(self) -> dict[str, float]:
        out = {name: float(v) for name, v in self.pass_at_k.compute().items()}
        out.update({name: float(v) for name, v in self.pass_rate.compute().items()})
        out["strict_accuracy"] = float(self.strict_accuracy.compute())
        out["exact_match"] = float(self.exact_match.compute())
        out["runtime_s"] = float(self.runtime.compute())
        out["tokens_per_s"] = float(self.throughput.compute())
        p2 = self.p2value.compute()
        out["p2value_mean"] = float(p2["p2value_mean"])
        out["possibility_mean"] = float(p2["possibility_mean"])
        return out

    def missing_ks(self) -> tuple[int, ...]:
        return self.pass_at_k.missing_ks()

    def histograms(self) -> dict[str, list[int]]:
        """P2Value / possibility / pass-rate histograms over ``bin_edges`` (``num_bins`` bins on [0, 1])."""
        return self.p2value.histograms()

    @property
    def bin_edges(self) -> list[float]:
        return self.p2value.bin_edges.tolist()

    def reset(self) -> None:
        for metric in self.children():
            metric.reset()

    def merge_state(self, other: CodeGenMetrics) -> None:
        """Add ``other``'s states to this one (what a DDP all-reduce does), e.g. to combine shards."""
        if not isinstance(other, CodeGenMetrics) or other.ks != self.ks:
            raise ValueError("merge_state needs a CodeGenMetrics with the same ks")
        for name, metric in self.named_children():
            metric.merge_state(getattr(other, name))
