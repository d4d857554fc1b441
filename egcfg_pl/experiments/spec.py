"""What an experiment campaign runs: the base run settings every variant starts from, and the steps.

Loaded from YAML by the runner (``python cli.py experiment --config configs/experiments_cpu.yaml``);
attribute docstrings are the CLI help, and any field can be overridden on the command line
(``--run.max_epochs 2 --steps [step2_btp]``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from egcfg_pl.metrics.independence import refuse_dependent_pass_k
from egcfg_pl.models import LoraSettings, ModelSpec
from egcfg_pl.problems import ProblemSet
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.replay import ReplaySettings
from egcfg_pl.replay.priorities import check_strategy
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig

StepName = Literal["step1_baseline", "step2_btp", "step3_ablation", "step4_hyperparams", "big_to_small"]
STEPS: tuple[str, ...] = ("step1_baseline", "step2_btp", "step3_ablation", "step4_hyperparams", "big_to_small")


def _greedy() -> GenerationSettings:
    return GenerationSettings(strategy="greedy", num_beams=1, num_return_sequences=1, progress=False)


@dataclass
class RunSettings:
    """One BTP run (model, problems, sampling, replay, training); every variant is this with a few fields changed."""

    model: ModelSpec = field(default_factory=ModelSpec)
    """The target model: the one fine-tuned and evaluated."""
    lora: LoraSettings = field(default_factory=LoraSettings)
    """LoRA adapter trained on the target."""
    template: PromptTemplate = field(default_factory=PromptTemplate)
    """Prompt template shared by sampling, training and evaluation."""
    train: ProblemSet = field(default_factory=lambda: ProblemSet(dataset="mbpp", split="train"))
    """Problems the refresh samples and tests (the training set)."""
    held_out: ProblemSet = field(default_factory=lambda: ProblemSet(dataset="mbpp", split="test", limit=50))
    """Problems every variant is evaluated on; never trained on."""
    drop_overlapping_train: bool = True
    """Remove training problems that also appear held out: same id (sanitized MBPP keeps MBPP task numbers),
    statement (MBPP repeats 3) or test asserts."""
    sampling: GenerationSettings = field(default_factory=GenerationSettings)
    """How the refresh samples training candidates (beam search, BTP step 1)."""
    evaluation: GenerationSettings = field(default_factory=_greedy)
    """How held-out answers are generated (greedy: pass@1 = strict accuracy)."""
    pass_k: list[int] = field(default_factory=lambda: [1])
    """k of the held-out pass@k (each k <= evaluation.num_return_sequences; k > 1 needs evaluation strategy
    ``sample``: beam candidates are not independent draws)."""
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    """Executor for training candidates and held-out answers."""
    replay: ReplaySettings = field(default_factory=ReplaySettings)
    """P2Value α, draw strategy and its exponent; the ablation and grid steps vary these."""
    source_model: ModelSpec | None = None
    """A separate frozen model that writes the candidates (big-to-small); null = the target samples itself."""
    problems_per_refresh: int | None = None
    """Training problems sampled per iteration (seeded rotation); null = all of ``train``."""
    max_epochs: int = 1
    """BTP iterations: each refreshes the buffer from the current (or source) model, then trains."""
    samples_per_epoch: int = 64
    """Replay draws per iteration (sets the optimizer steps: samples_per_epoch / batch_size)."""
    batch_size: int = 4
    """Experiences per optimizer step."""
    max_length: int = 1024
    """Token limit of prompt + program in training."""
    eval_batch_size: int = 8
    """Held-out problems per evaluation batch."""
    learning_rate: float = 2e-4
    """AdamW learning rate of the adapter."""
    accelerator: str = "auto"
    """Lightning accelerator: cpu, gpu or auto."""
    precision: str = "32-true"
    """Lightning precision (``bf16-true`` on a CPU with AVX512-BF16 or a bf16 GPU)."""
    seed: int = 0
    """Seed of everything (LoRA init, replay draws, problem rotation): the same for every variant."""
    progress_bar: bool = False
    """Show Lightning's progress bars."""

    def __post_init__(self) -> None:
        for name in ("max_epochs", "samples_per_epoch", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"run.{name} must be >= 1, got {getattr(self, name)}")
        per_problem = 1 if self.evaluation.strategy == "greedy" else self.evaluation.num_return_sequences
        too_big = [k for k in self.pass_k if k > per_problem]
        if too_big:
            raise ValueError(
                f"run.pass_k {too_big} exceed the held-out candidates per problem; raise "
                "run.evaluation.num_return_sequences (with strategy sample or beam) or drop those k"
            )
        refuse_dependent_pass_k(self.pass_k, self.evaluation.strategy, "run.pass_k", "run.evaluation.strategy")


@dataclass
class HyperGrid:
    """Step 4: every combination of these values is one fine-tuned variant."""

    p2value_alpha: list[float] = field(default_factory=lambda: [0.0, 0.5, 1.0])
    """α of P2Value = α·possibility + (1−α)·pass_rate (paper Eq. 5); 0 = pass rate only, 1 = possibility only."""
    sampling_alpha: list[float] = field(default_factory=lambda: [0.5, 1.0, 2.0])
    """Exponent a of the prioritized draw P(i) = p_i^a / Σ p_k^a (paper Eq. 6); 0 = uniform."""

    def __post_init__(self) -> None:
        if not self.p2value_alpha or not self.sampling_alpha:
            raise ValueError("grid.p2value_alpha and grid.sampling_alpha need at least one value each")
        bad = [a for a in self.p2value_alpha if not 0.0 <= a <= 1.0]
        if bad:
            raise ValueError(f"grid.p2value_alpha values must be in [0, 1], got {bad}")
        if any(a < 0 for a in self.sampling_alpha):
            raise ValueError(f"grid.sampling_alpha values must be >= 0, got {self.sampling_alpha}")


@dataclass
class ExperimentSpec:
    """A campaign: the base run, which steps to run, the ablation list, the grid and the big-to-small source."""

    name: str = "experiments"
    """Results go to ``<output_dir>/<name>/``."""
    output_dir: str = "results"
    """Root folder of all campaigns."""
    run: RunSettings = field(default_factory=RunSettings)
    """The base run every variant is derived from."""
    steps: list[StepName] = field(default_factory=lambda: list(STEPS))
    """Steps to run, in this order (the untrained held-out evaluation always runs first: it is the RSR baseline)."""
    strategies: list[str] = field(default_factory=lambda: ["power", "rank", "uniform", "pass_rate", "possibility"])
    """Step 3: one fine-tuned variant per replay draw strategy."""
    grid: HyperGrid = field(default_factory=HyperGrid)
    """Step 4: the hyperparameter grid."""
    big_to_small_source: ModelSpec | None = None
    """Big-to-small: the (larger) model that writes the candidates for the target ``run.model``."""
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
        for strategy in self.strategies:
            check_strategy(strategy)
        if "big_to_small" in self.steps and self.big_to_small_source is None:
            raise ValueError("step big_to_small needs big_to_small_source (the model that writes the candidates)")
        if self.bootstrap_samples < 100:
            raise ValueError(f"bootstrap_samples must be >= 100 for a usable interval, got {self.bootstrap_samples}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be >= 1 or null (torch's default), got {self.threads}")
        if not self.name or "/" in self.name:
            raise ValueError(f"name {self.name!r} must be a non-empty folder name without '/'")
