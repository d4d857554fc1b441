"""What the replay buffer stores: a tested candidate with its possibility and P2Value."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from egcfg_pl.sampling.candidate import Candidate, PossibilityForm
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict


def p2value(possibility: float | None, pass_rate: float, alpha: float) -> float:
    """P2Value = α·P + (1−α)·pass_rate (BTP paper, Eq. 5).

    With an unknown possibility (an API that returns no log-probs) the value falls back to the pass
    rate alone; the caller logs that once per run.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"p2value_alpha must be in [0, 1], got {alpha}")
    if possibility is None:
        return pass_rate
    return alpha * possibility + (1.0 - alpha) * pass_rate


@dataclass(frozen=True)
class Experience:
    candidate: Candidate
    verdict: Verdict
    possibility: float | None
    p2value: float

    @classmethod
    def build(
        cls, candidate: Candidate, verdict: Verdict, alpha: float, form: PossibilityForm = "normalized"
    ) -> Experience:
        possibility = candidate.possibility(form)
        return cls(candidate, verdict, possibility, p2value(possibility, verdict.pass_rate, alpha))

    @property
    def problem_id(self) -> str:
        return self.candidate.problem_id

    @property
    def program(self) -> str:
        return self.candidate.program

    @property
    def pass_rate(self) -> float:
        return self.verdict.pass_rate


def experience_to_dict(exp: Experience) -> dict[str, Any]:
    """A JSON-able dict (checkpoints, results files); ``experience_from_dict`` inverts it exactly."""
    verdict = asdict(exp.verdict)
    verdict["results"] = [{**r, "status": r["status"].value} for r in verdict["results"]]
    return {
        "candidate": asdict(exp.candidate),
        "verdict": verdict,
        "possibility": exp.possibility,
        "p2value": exp.p2value,
    }


def experience_from_dict(data: dict[str, Any]) -> Experience:
    v = data["verdict"]
    results = tuple(TestResult(Status(r["status"]), r["seconds"], r["detail"]) for r in v["results"])
    return Experience(
        candidate=Candidate(**data["candidate"]),  # files written before ``truncated`` existed read as False
        verdict=Verdict(v["problem_id"], results, v["seconds"]),
        possibility=data["possibility"],
        p2value=data["p2value"],
    )
