"""The prioritized replay buffer: tested programs (failed ones included) and how batches are drawn."""

from __future__ import annotations

import io
import logging
import math
import os
import tokenize
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np

from egcfg_pl.replay.experience import Experience, experience_from_dict, experience_to_dict
from egcfg_pl.replay.priorities import DrawStrategy, check_strategy, sampling_probabilities

log = logging.getLogger(__name__)

Eviction = Literal["lowest_p2value", "oldest"]
TruncatedPolicy = Literal["skip", "no_eos"]


def setting_path(name: str) -> str:
    """Where a replay setting lives in a fit config (an experiment's variants are fit configs too), for errors."""
    return f"data.replay.{name}"


@dataclass
class ReplaySettings:
    """How experiences are scored, kept and drawn."""

    p2value_alpha: float = 0.5
    """α in P2Value = α·possibility + (1−α)·pass_rate (paper Eq. 5)."""
    possibility_form: Literal["normalized", "raw"] = "normalized"
    """The *form* of the possibility that enters P2Value (the value itself is per program): ``normalized`` = exp(logprob / tokens) (default; the raw product is
    ~1e-20 for a 100-token program, which would make P2Value ≈ (1−α)·pass_rate), or ``raw`` = exp(logprob)."""
    strategy: DrawStrategy = "power"
    """Draw rule: power (p^a/Σp^a on P2Value), rank (1/rank^a), or the ablations uniform, pass_rate, possibility."""
    sampling_alpha: float = 1.0
    """The exponent a of the draw rule (0 = uniform)."""
    capacity: int = 10_000
    """Most experiences kept; beyond it the ``eviction`` rule removes entries."""
    eviction: Eviction = "lowest_p2value"
    """``lowest_p2value`` drops the lowest-valued (oldest first among ties); ``oldest`` is FIFO."""
    min_pass_rate: float = 0.0
    """Experiences with a lower pass rate are not stored (0 keeps failed programs, as the paper does)."""
    seed: int | None = None
    """Seed of the draw RNG (its state is checkpointed); null = the run's seed (``seed_everything``, or
    ``run.seed`` in an experiment), so a new run seed also gives a new draw stream."""
    truncated: TruncatedPolicy = "skip"
    """Programs cut off by the sampler's token budget (``Candidate.truncated``) are never taught to end: ``skip``
    (default) stores them (statistics, eviction) but never draws them for training; ``no_eos`` draws them and
    trains on them without the closing fence and EOS. ``buffer/skipped_truncated`` counts the skipped ones."""

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Settings pickled in a checkpoint's hyper-parameters before ``possibility`` was named ``possibility_form``."""
        if "possibility" in state:
            state = {"possibility_form": state["possibility"], **{k: v for k, v in state.items() if k != "possibility"}}
        self.__dict__.update(state)

    def __post_init__(self) -> None:
        check_strategy(self.strategy, setting_path("strategy"))
        if self.possibility_form not in ("normalized", "raw"):
            raise ValueError(
                f"{setting_path('possibility_form')} {self.possibility_form!r} is unknown; use normalized or raw")
        if not 0.0 <= self.p2value_alpha <= 1.0:
            raise ValueError(f"{setting_path('p2value_alpha')} must be in [0, 1], got {self.p2value_alpha}")
        if not (self.sampling_alpha >= 0.0 and math.isfinite(self.sampling_alpha)):
            raise ValueError(
                f"{setting_path('sampling_alpha')} must be a finite number >= 0 (0 = uniform draws), "
                f"got {self.sampling_alpha}"
            )
        if not 0.0 <= self.min_pass_rate <= 1.0:
            raise ValueError(
                f"{setting_path('min_pass_rate')} must be in [0, 1] (pass rates are; 0 keeps failed programs, "
                f"1 keeps only programs passing every test), got {self.min_pass_rate}"
            )
        if self.capacity < 1:
            raise ValueError(f"{setting_path('capacity')} must be >= 1, got {self.capacity}")
        if self.truncated not in ("skip", "no_eos"):
            raise ValueError(f"{setting_path('truncated')} {self.truncated!r} is unknown; use skip or no_eos")
        if self.eviction not in ("lowest_p2value", "oldest"):
            raise ValueError(f"{setting_path('eviction')} {self.eviction!r} is unknown; use lowest_p2value or oldest")


def run_seed() -> int:
    """The seed Lightning's ``seed_everything`` recorded for this process (0 when it was not called)."""
    return int(os.environ.get("PL_GLOBAL_SEED", "0"))


def normalize_program(program: str) -> str:
    """Key for duplicate detection: comments, blank lines and trailing spaces do not make a new program."""
    try:
        tokens = tokenize.generate_tokens(io.StringIO(program).readline)
        comments = [(t.start, t.end) for t in tokens if t.type == tokenize.COMMENT]
    except (tokenize.TokenError, IndentationError, SyntaxError):
        comments = []
    lines = program.splitlines()
    for (row, col), _ in reversed(comments):  # cut each comment off its line
        lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for line in lines if line.strip())



def entry_key(exp: Experience) -> tuple[str, str]:
    """What makes two experiences the same buffer entry: the problem and the normalised program."""
    return (exp.problem_id, normalize_program(exp.program))

class ReplayBuffer:
    """Experiences keyed by (problem id, normalised program).

    A duplicate replaces the stored entry (its possibility reflects the newer model) and bumps its
    ``seen`` count; insertion order is kept for the first appearance. Draws are with replacement, from the
    entries training can use (``excluded``): the draw rule is applied to that population, so batches stay full
    and ranks are ranks among the drawable entries.
    """

    def __init__(self, settings: ReplaySettings | None = None) -> None:
        self.settings = settings or ReplaySettings()
        self._items: dict[tuple[str, str], Experience] = {}
        self._seen: dict[tuple[str, str], int] = {}
        self._order: dict[tuple[str, str], int] = {}  # insertion counter, for "oldest"
        self._counter = 0
        self.rng = np.random.default_rng(self.settings.seed if self.settings.seed is not None else run_seed())
        self.prompt_fits: Callable[[Experience], bool] | None = None
        """Set by the datamodule once the target's tokenizer is known (``ReplayCollator.fits``): False for an
        experience whose prompt alone fills ``data.max_length``; such entries are never drawn."""

    def __len__(self) -> int:
        return len(self._items)

    @property
    def experiences(self) -> list[Experience]:
        return list(self._items.values())

    def add(self, experiences: Iterable[Experience]) -> int:
        """Store experiences; returns how many were new (not duplicates, not filtered)."""
        new = 0
        for exp in experiences:
            if exp.pass_rate < self.settings.min_pass_rate:
                continue
            key = entry_key(exp)
            if key not in self._items:
                new += 1
                self._order[key] = self._counter
                self._counter += 1
            self._items[key] = exp
            self._seen[key] = self._seen.get(key, 0) + 1
        self._evict()
        return new

    def _evict(self) -> None:
        excess = len(self._items) - self.settings.capacity
        if excess <= 0:
            return
        keys = list(self._items)
        if self.settings.eviction == "oldest":
            victims = sorted(keys, key=self._order.__getitem__)[:excess]
        else:
            victims = sorted(keys, key=lambda k: (self._items[k].p2value, self._order[k]))[:excess]
        for key in victims:
            del self._items[key], self._seen[key], self._order[key]

    def excluded(self, exp: Experience) -> str | None:
        """Why ``exp`` is never drawn for training, or None: ``truncated`` (cut off by the token budget, under
        ``truncated: skip``), ``empty`` (cut off before any program text, under ``no_eos``: with no fence and no EOS
        there is no token to learn, and a batch of such rows has a NaN loss) or ``long_prompt`` (its prompt leaves
        no room for the program, see ``prompt_fits``)."""
        if exp.candidate.truncated and self.settings.truncated == "skip":
            return "truncated"
        if exp.candidate.truncated and not exp.program.strip():
            return "empty"
        if self.prompt_fits is not None and not self.prompt_fits(exp):
            return "long_prompt"
        return None

    def drawable(self) -> int:
        """How many entries the draws can pick (the rest is ``excluded``)."""
        return sum(self.excluded(e) is None for e in self._items.values())

    def probabilities(self) -> np.ndarray:
        """The draw probability of each entry of ``experiences`` (0 for excluded ones); sums to 1."""
        items = self.experiences
        drawable = [i for i, e in enumerate(items) if self.excluded(e) is None]
        if items and not drawable:
            reasons = [self.excluded(e) for e in items]
            raise ValueError(
                f"none of the {len(items)} replay experiences can be trained on: {reasons.count('truncated')} are "
                f"cut off by the token budget ({setting_path('truncated')} is skip: raise the sampler's "
                f"max_new_tokens or set it to no_eos), {reasons.count('empty')} were cut off before any program text "
                f"and {reasons.count('long_prompt')} have prompts longer than data.max_length (raise it)"
            )
        s = self.settings
        kept = [items[i] for i in drawable]
        sub = sampling_probabilities(
            [e.p2value for e in kept],
            [e.pass_rate for e in kept],
            [e.possibility for e in kept],
            strategy=s.strategy,
            alpha=s.sampling_alpha,
        )
        probabilities = np.zeros(len(items))
        probabilities[drawable] = sub
        return probabilities

    def sample_indices(self, n: int) -> np.ndarray:
        """``n`` indices into ``experiences`` drawn with replacement by the configured strategy."""
        return self.rng.choice(len(self._items), size=n, replace=True, p=self.probabilities())

    def sample(self, n: int) -> list[Experience]:
        items = self.experiences
        return [items[i] for i in self.sample_indices(n)]

    def stats(self) -> dict[str, float]:
        """Buffer summary for logging: size, means, solved fraction, problems covered, truncated programs, and
        how many entries the draws skip (``skipped_truncated``, ``skipped_empty``, ``skipped_long_prompt``; the rest
        is ``drawable``)."""
        items = self.experiences
        if not items:
            return {"buffer/size": 0.0}
        reasons = [self.excluded(e) for e in items]
        p2 = np.array([e.p2value for e in items])
        pr = np.array([e.pass_rate for e in items])
        known = [e.possibility for e in items if e.possibility is not None]
        solved = {e.problem_id for e in items if e.verdict.all_passed}
        return {
            "buffer/size": float(len(items)),
            "buffer/problems": float(len({e.problem_id for e in items})),
            "buffer/problems_solved": float(len(solved)),
            "buffer/mean_p2value": float(p2.mean()),
            "buffer/mean_pass_rate": float(pr.mean()),
            "buffer/frac_all_passed": float(np.mean([e.verdict.all_passed for e in items])),
            "buffer/frac_partial": float(np.mean((pr > 0) & (pr < 1))),
            "buffer/mean_possibility": float(np.mean(known)) if known else float("nan"),
            "buffer/unknown_possibility": float(len(items) - len(known)),
            "buffer/truncated": float(sum(e.candidate.truncated for e in items)),
            "buffer/frac_truncated": float(np.mean([e.candidate.truncated for e in items])),
            "buffer/skipped_truncated": float(reasons.count("truncated")),
            "buffer/skipped_long_prompt": float(reasons.count("long_prompt")),
            "buffer/skipped_empty": float(reasons.count("empty")),
            "buffer/drawable": float(reasons.count(None)),
        }

    def state_dict(self) -> dict[str, Any]:
        keys = list(self._items)
        return {
            "experiences": [experience_to_dict(self._items[k]) for k in keys],
            "seen": [self._seen[k] for k in keys],
            "order": [self._order[k] for k in keys],
            "counter": self._counter,
            "rng": self.rng.bit_generator.state,
            "settings": asdict(self.settings),  # plain values: checkpoints stay loadable with weights_only
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore contents, counters and the draw RNG, under *this* buffer's settings.

        Each entry's possibility and P2Value are recomputed from its candidate and verdict with the current
        ``p2value_alpha`` / ``possibility``, then ``min_pass_rate`` and ``capacity`` are applied again, so a
        run resumed with changed replay settings does not keep values scored the old way. With unchanged
        settings this reproduces the saved entries exactly (bit-identical P2Values). Settings that differ
        from the checkpoint's are logged. ``seed`` only seeds a fresh buffer; the saved RNG state wins.
        """
        changed = self._changed_settings(state.get("settings"))
        if changed:
            log.warning(
                "replay buffer restored under different settings than it was saved with (%s): entries are "
                "rescored and re-filtered under the current ones",
                ", ".join(f"{setting_path(k)}: {old!r} -> {new!r}" for k, (old, new) in changed.items()),
            )
        s = self.settings
        self._items.clear(), self._seen.clear(), self._order.clear()
        below = 0
        for data, seen, order in zip(state["experiences"], state["seen"], state["order"], strict=True):
            saved = experience_from_dict(data)
            exp = Experience.build(saved.candidate, saved.verdict, s.p2value_alpha, s.possibility_form)
            if exp.pass_rate < s.min_pass_rate:
                below += 1
                continue
            key = entry_key(exp)
            self._items[key], self._seen[key], self._order[key] = exp, seen, order
        self._counter = state["counter"]
        self.rng.bit_generator.state = state["rng"]
        before = len(self._items)
        self._evict()
        if below or before > len(self._items):
            log.warning(
                "restoring the replay buffer dropped %d entries below %s=%s and %d beyond %s=%d",
                below, setting_path("min_pass_rate"), s.min_pass_rate,
                before - len(self._items), setting_path("capacity"), s.capacity,
            )

    def _changed_settings(self, saved: dict[str, Any] | None) -> dict[str, tuple[Any, Any]]:
        """``{field: (saved, current)}`` for settings that differ from a checkpoint's (``seed`` excluded)."""
        if saved is None:  # a checkpoint from before settings were saved: nothing to compare
            return {}
        current = asdict(self.settings)
        saved = {"possibility_form": saved["possibility"], **saved} if "possibility" in saved else saved  # old name
        names = [f.name for f in fields(ReplaySettings) if f.name != "seed"]
        return {n: (saved.get(n), current[n]) for n in names if n in saved and saved[n] != current[n]}
