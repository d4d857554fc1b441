"""A sampled program and its possibility (sequence probability), before it is tested."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

PossibilityForm = Literal["normalized", "raw"]
POSSIBILITY_FORMS: tuple[str, ...] = ("normalized", "raw")
LogprobScope = Literal["reply", "program"]


@dataclass(frozen=True)
class Candidate:
    """One candidate program for one problem.

    ``logprob`` is the sum of the generated tokens' log-probabilities (natural log), counted once:
    no length penalty, no normalisation. ``None`` means the source gave no log-probs (some APIs); the
    possibility is then unknown and never invented.
    """

    problem_id: str
    program: str  # the extracted, runnable program
    text: str  # the raw generated text the program was extracted from
    logprob: float | None
    num_tokens: int
    source: str = ""  # model or API that produced it
    iteration: int = 0
    rank: int = 0  # position among this problem's candidates (0 = best beam / first sample)
    truncated: bool = False
    """The generation ran out of its token budget (``max_new_tokens``; an API's ``finish_reason == "length"``)
    before EOS or a stop string: the program may be cut off mid-statement and must not be taught to end."""
    logprob_scope: LogprobScope = "reply"
    """What ``logprob`` and ``num_tokens`` cover: ``reply`` = every generated token (a local sampler's
    continuation with its stop string / EOS; an API reply whose tokens could not be aligned with its text, prose
    and fences included), ``program`` = only the reply's tokens inside the extracted code (``prompts.program_span``;
    API replies whose returned tokens spell the text)."""

    @property
    def probability(self) -> float | None:
        """Raw sequence probability P(t) = prod p(token) = exp(sum log p). Tiny for long programs."""
        return None if self.logprob is None else math.exp(self.logprob)

    @property
    def normalized_probability(self) -> float | None:
        """Per-token geometric mean probability exp(logprob / num_tokens), in (0, 1]."""
        if self.logprob is None:
            return None
        return math.exp(self.logprob / max(self.num_tokens, 1))

    def possibility(self, form: PossibilityForm = "normalized") -> float | None:
        """The possibility P that enters P2Value: ``normalized`` (default) or ``raw``.

        ``raw`` is the paper's Π p(token); for programs of a hundred tokens it is ~1e-20 and P2Value
        collapses to (1-α)·pass_rate, so the default is the length-normalised form.
        """
        if form == "raw":
            return self.probability
        if form == "normalized":
            return self.normalized_probability
        raise ValueError(f"possibility form {form!r} is unknown; use one of {POSSIBILITY_FORMS}")
