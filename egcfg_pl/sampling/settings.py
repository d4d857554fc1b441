"""How a local model generates candidates: beam search (BTP's default), greedy, or sampling."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

DecodingStrategy = Literal["beam", "greedy", "sample"]
DECODING_STRATEGIES: tuple[str, ...] = ("beam", "greedy", "sample")


@dataclass
class GenerationSettings:
    """Decoding settings for the local sampler (``HFSampler``)."""

    strategy: DecodingStrategy = "beam"
    """``beam`` (beam search, the paper's sampler), ``greedy`` (one candidate), or ``sample`` (nucleus sampling)."""
    num_beams: int = 5
    """Beam width for ``beam``; ignored otherwise."""
    num_return_sequences: int = 5
    """Candidates per problem: the best beams for ``beam`` (<= num_beams), independent samples for ``sample``;
    ``greedy`` always returns 1."""
    temperature: float = 0.8
    """Softmax temperature for ``sample``. Candidate log-probs are always under the model itself (T = 1)."""
    top_p: float = 0.95
    """Nucleus mass for ``sample`` (1.0 disables it)."""
    max_new_tokens: int = 384
    """Generation budget per candidate, in tokens."""
    max_new_tokens_by_source: dict[str, int] = field(default_factory=dict)
    """Per-dataset budget (``Problem.source``, e.g. ``{mbpp: 256}``) replacing ``max_new_tokens`` for that
    dataset's problems: a cap on answers that ramble past any program the dataset needs."""
    batch_size: int = 8
    """Problems decoded together; each expands to num_beams (or num_return_sequences) rows. With ``continuous``
    it is the number of problems in flight: a finished row's slot goes to the next problem at once."""
    continuous: bool = True
    """Decode with the continuous-batching engine (``sampling.engine``; ``beam``: ``sampling.beam_engine``, the
    same search as ``generate``'s per problem): finished rows leave the batch, log-probs are read off the decoding
    logits, no re-score pass. False (the reference path) = ``model.generate`` per batch, ``beam`` with its
    log-probs recorded during the search (``sampling.beam_scores``), ``greedy`` / ``sample`` with a teacher-forced
    re-score. A model whose KV cache the engine cannot re-lay out (not a plain ``DynamicCache``) takes the
    reference path whatever this says."""
    seed: int = 0
    """``sample`` reseeds torch from (seed, iteration, rank, chunk) on every call (``sampling.base.derive_seed``;
    the global RNG is restored after)."""
    length_buckets: bool = True
    """Batch problems of similar prompt length together (less left padding); output order is unchanged."""
    stop_strings: list[str] | None = None
    """Generation of a candidate stops once its text contains one of these; ``None`` = the prompt template's
    stop strings, ``[]`` = stop on EOS only. The text after the stop string is cut."""
    attention: str | None = "auto"
    """Attention implementation while decoding: ``auto`` = ``eager`` on CPU (torch's CPU SDPA kernel took half of a
    decode step, see benchmarks/README.md), in its grouped-query form that reads the KV cache in place for
    Llama-like models (``sampling.grouped_attention``), and the model's own elsewhere; a transformers name (``sdpa``,
    ``eager``, ...) forces one; ``None`` leaves the model's. Restored after each ``sample`` call."""
    progress: bool = True
    """Show a tqdm progress bar over problems."""
    merge_lora: bool = False
    """Fold a LoRA adapter into the base weights while generating (restored bit for bit afterwards). Decodes as
    fast as the plain model (1.16x the unmerged adapter end to end, beam 5 on 2 CPU cores; see
    benchmarks/README.md) but costs a copy of the adapted weights, and in bf16/fp16 the merged weights round
    away part of a small adapter update (10 of 40 beam candidates changed in that benchmark); exact in fp32.
    Quantized (4/8-bit) bases are never merged."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if self.strategy not in DECODING_STRATEGIES:
            raise ValueError(
                f"GenerationSettings.strategy {self.strategy!r} is unknown; use one of {DECODING_STRATEGIES}"
            )
        for name in ("num_beams", "num_return_sequences", "max_new_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"GenerationSettings.{name} must be >= 1, got {getattr(self, name)}")
        bad = {k: v for k, v in self.max_new_tokens_by_source.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ValueError(f"GenerationSettings.max_new_tokens_by_source values must be integers >= 1, got {bad}")
        if self.strategy == "beam" and self.num_return_sequences > self.num_beams:
            raise ValueError(
                f"GenerationSettings.num_return_sequences ({self.num_return_sequences}) must be <= num_beams "
                f"({self.num_beams}) for beam search; raise num_beams or lower num_return_sequences"
            )
        if self.strategy == "sample" and self.temperature <= 0:
            raise ValueError(
                f"GenerationSettings.temperature must be > 0 for sampling, got {self.temperature}; "
                "use strategy 'greedy' for deterministic decoding"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"GenerationSettings.top_p must be in (0, 1], got {self.top_p}")
        if self.stop_strings is not None and any(not s for s in self.stop_strings):
            raise ValueError("GenerationSettings.stop_strings must not contain empty strings")

    def budget(self, source: str) -> int:
        """``max_new_tokens`` for a problem of dataset ``source``."""
        return self.max_new_tokens_by_source.get(source, self.max_new_tokens)

    @property
    def candidates_per_problem(self) -> int:
        return 1 if self.strategy == "greedy" else self.num_return_sequences

    @property
    def rows_per_problem(self) -> int:
        """Sequences decoded in parallel for one problem (beams for beam search)."""
        return self.num_beams if self.strategy == "beam" else self.candidates_per_problem
