"""What an experiment campaign runs: a base LightningCLI fit config, the changes every variant shares, the steps.

There is one configuration schema: every variant is a fit config (``base`` files layered, ``fit`` on top, then the
variant's own dotted changes) built by the same parser and classes as ``python cli.py fit``, so any fit option
(weight decay, warm-up, scheduler, mode, api, source_api, refresh.*) can be set for the campaign or one variant.
The settings are checked where they live (``ReplaySettings``, ``BTPModule``, ...); the campaign checks every
variant's config before the first variant runs. Loaded from YAML by ``cli.py experiment --config X.yaml``;
attribute docstrings are the CLI help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from egcfg_pl.models import ModelSpec
from egcfg_pl.problems import ProblemSet

StepName = Literal["step1_baseline", "step2_btp", "step3_ablation", "step4_hyperparams", "big_to_small", "protocol"]
STEPS: tuple[str, ...] = ("step1_baseline", "step2_btp", "step3_ablation", "step4_hyperparams", "big_to_small", "protocol")


@dataclass
class HyperGrid:
    """Step 4: every combination of these values is one fine-tuned variant (``data.replay`` checks each value)."""

    p2value_alpha: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    """α of P2Value = α·possibility + (1−α)·pass_rate (paper Eq. 5); 0 = pass rate only, 1 = possibility only."""
    sampling_alpha: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Exponent a of the prioritized draw P(i) = p_i^a / Σ p_k^a (paper Eq. 6); 0 = uniform."""

    def __post_init__(self) -> None:
        if not self.p2value_alpha or not self.sampling_alpha:
            raise ValueError("grid.p2value_alpha and grid.sampling_alpha need at least one value each")


@dataclass
class ExperimentSpec:
    """A campaign: the base fit config, which steps to run, the ablation list, the grid and the big-to-small source."""

    name: str = "experiments"
    """Results go to ``<output_dir>/<name>/``."""
    output_dir: str = "results"
    """Root folder of all campaigns."""
    base: list[str] = field(default_factory=list)
    """LightningCLI fit config files every variant starts from, layered in order (as ``cli.py fit --config a
    --config b``: mappings merge, lists and values replace); paths relative to the working directory."""
    fit: dict[str, Any] = field(default_factory=dict)
    """Fit options on top of ``base`` for every variant: nested like a fit YAML (``data: {train: ...}``) or dotted
    (``data.replay.strategy: rank``). A campaign without ``base`` embeds its whole fit config here.
    ``trainer.default_root_dir`` is set per variant (``runs/<key>/``) and fit-time validation is off."""
    held_out: dict[str, ProblemSet] = field(default_factory=dict)
    """Named held-out sets every variant is tested on after its fit (one evaluation JSON each, in
    ``runs/<key>/eval/<name>/``); the first is the one the steps compare. Empty = the fit config's ``data.held_out``,
    named ``held_out``."""
    validation: ProblemSet | None = None
    """Model selection set (MBPP validation): every trained variant is validated on it after each BTP iteration
    and keeps each iteration's adapter; the pre-registered rule picks one iteration per variant (``chosen.yaml``),
    and that iteration's adapter is the one tested on ``held_out``. null: the final weights are tested."""
    until: Literal["selection"] | None = None
    """``selection``: stop after writing ``chosen.yaml`` (fits and validations only), so the selection can be
    committed before any test set is evaluated; rerun without it to test. Needs ``validation``."""
    steps: list[StepName] = field(default_factory=lambda: list(STEPS))
    """Steps to run, in this order (the untrained held-out evaluation always runs first: it is the RSR baseline)."""
    strategies: list[str] = field(default_factory=lambda: ["power", "rank", "uniform", "pass_rate", "possibility"])
    """Step 3: one fine-tuned variant per replay draw strategy."""
    grid: HyperGrid = field(default_factory=HyperGrid)
    """Step 4: the hyperparameter grid."""
    big_to_small_source: ModelSpec | None = None
    """Big-to-small: the (larger) model that writes the candidates (``refresh.source_model``) for the target
    ``model.model``."""
    share_initial_samples: bool = True
    """Sample and test the training problems once for all variants while no optimizer step has changed the
    sampling weights (iteration 0, or every iteration with a frozen source): the variants then differ only in
    what they replay, and that sampling runs once instead of once per variant. False resamples in every variant."""
    bootstrap_samples: int = 2000
    """Resamples of the problem-level bootstrap behind the 95% intervals."""
    threads: int | None = None
    """torch intra-op CPU threads for the campaign (null = torch's default, one per core). On a CPU shared with
    other jobs, 1 avoids OpenMP oversubscription (measured >10x faster greedy sampling on a loaded 2-core box)."""

    def __post_init__(self) -> None:
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise ValueError(f"steps {unknown} are unknown; choose from {list(STEPS)}")
        if not self.strategies:
            raise ValueError("strategies is empty; list at least one replay strategy for step3_ablation")
        if "big_to_small" in self.steps and self.big_to_small_source is None:
            raise ValueError("step big_to_small needs big_to_small_source (the model that writes the candidates)")
        if self.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples must be >= 100 for a usable interval, got {self.bootstrap_samples}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null (torch's default), got {self.threads}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name {self.name!r} must be a non-empty folder name without '/'")
        if self.until is not None and self.validation is None:
            raise ValueError("until: selection needs a validation set (validation: {dataset: mbpp, split: validation})")
        if not self.base and not self.fit:
            raise ValueError("the campaign has no fit config: name base files (base: [configs/base_cpu.yaml]) "
                             "or embed one under fit:")
