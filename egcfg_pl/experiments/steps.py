"""The campaign's steps as lists of variants of the base run, and how a step's results are assembled.

A variant is the campaign's fit config with a few options changed (``changes``, dotted fit-config paths such
as ``data.replay.strategy``); every variant goes through the same ``fit_variant`` / ``test_variant`` path. The untrained target, evaluated once, is each step's baseline:
RSR (pass@1 ratio), paired differences with (unadjusted) 95% intervals and the paired exact test
(McNemar for pass/fail) are taken against it; the tests' p-values are Holm-adjusted across the step's
variants, since one step compares many variants with the same baseline.

- step1_baseline: sample-and-filter (rejection-sampling fine-tuning). The same sampler and budget as BTP,
  but the buffer keeps only programs that pass every test (``data.replay.min_pass_rate: 1``) and draws
  uniformly. If nothing passes, no optimizer step is taken and the untrained evaluation stands for it.
- step2_btp: the base run (power draws on P2Value, paper Eqs. 5-6).
- step3_ablation: one variant per replay draw strategy.
- step4_hyperparams: the grid of P2Value α × draw exponent a.
- big_to_small: a separate source model writes the candidates; the source is evaluated too.
- protocol: the pre-registered comparison of PROTOCOL.md, per held-out set (``protocol.py``).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from egcfg_pl.experiments.spec import ExperimentSpec
from egcfg_pl.experiments.stats import holm, paired_delta, per_problem, summarize_eval
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.metrics.rsr import relative_success_rate

METRICS = ("pass@1", "avg_pass_rate")


@dataclass(frozen=True)
class Variant:
    """The campaign's fit config with ``changes`` applied (``{"data.replay.strategy": "rank"}``)."""

    name: str
    changes: dict[str, Any] = field(default_factory=dict)
    train: bool = True
    stop_if_empty: bool = False


UNTRAINED = Variant("untrained", train=False)


def _step1(spec: ExperimentSpec) -> list[Variant]:
    return [Variant("sample_and_filter", {"data.replay.strategy": "uniform", "data.replay.min_pass_rate": 1.0}, stop_if_empty=True)]


def _step2(spec: ExperimentSpec) -> list[Variant]:
    return [Variant("btp")]


def _step3(spec: ExperimentSpec) -> list[Variant]:
    return [Variant(strategy, {"data.replay.strategy": strategy}) for strategy in spec.strategies]


def _step4(spec: ExperimentSpec) -> list[Variant]:
    grid = itertools.product(spec.grid.p2value_alpha, spec.grid.sampling_alpha)
    return [
        Variant(f"p2value_alpha={a:g},sampling_alpha={b:g}", {"data.replay.p2value_alpha": a, "data.replay.sampling_alpha": b})
        for a, b in grid
    ]


def _big_to_small(spec: ExperimentSpec) -> list[Variant]:
    source = dataclasses.asdict(spec.big_to_small_source)
    return [Variant("source", {"model.model": source}, train=False),
            Variant("target_from_source", {"refresh.source_model": source})]


def _protocol(spec: ExperimentSpec) -> list[Variant]:
    """PROTOCOL.md's trained variants; the first is the reference of the second family of comparisons."""
    return [
        Variant("sample_and_filter", {"data.replay.strategy": "uniform", "data.replay.min_pass_rate": 1.0}, stop_if_empty=True),
        Variant("btp_power", {"data.replay.strategy": "power"}),
        Variant("btp_rank", {"data.replay.strategy": "rank"}),
        Variant("uniform", {"data.replay.strategy": "uniform"}),
        Variant("pass_rate_only", {"data.replay.strategy": "power", "data.replay.p2value_alpha": 0.0}),
    ]


VARIANTS: dict[str, Callable[[ExperimentSpec], list[Variant]]] = {
    "step1_baseline": _step1,
    "step2_btp": _step2,
    "step3_ablation": _step3,
    "step4_hyperparams": _step4,
    "big_to_small": _big_to_small,
    "protocol": _protocol,
}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarized(held_out: dict[str, Any], spec: ExperimentSpec, seed: int) -> dict[str, Any]:
    """The held-out record plus mean and 95% interval of pass@1 and the average pass rate."""
    return {**held_out, **summarize_eval(held_out["eval_json"], spec.bootstrap_samples, seed)}


def compare(record: dict[str, Any], baseline: dict[str, Any], samples: int, seed: int) -> dict[str, Any]:
    """RSR of pass@1 and paired (record − baseline) differences over the shared held-out problems."""
    mine, theirs = (per_problem(EvalReport.from_json(r["eval_json"])) for r in (record, baseline))
    rsr = relative_success_rate(record["pass@1"]["mean"], baseline["pass@1"]["mean"])
    out: dict[str, Any] = {"rsr_pass@1": _finite(rsr)}
    if not math.isfinite(rsr):
        out["rsr_note"] = "undefined: the baseline solved no problem (compare the raw pass@1 values)"
    out["delta"] = {m: paired_delta(mine[m], theirs[m], samples, seed) for m in METRICS}
    return out


def assemble(
    step: str, spec: ExperimentSpec, run: Callable[[Variant], dict[str, Any]]
) -> dict[str, Any]:
    """Run (or fetch) every variant of ``step`` and the untrained baseline; returns the step's JSON object."""
    baseline = dict(run(UNTRAINED))
    seed = baseline["seed"]  # the fit config's seed_everything: the bootstrap's seed too
    baseline["held_out"] = summarized(baseline["held_out"], spec, seed)
    entries = []
    for variant in VARIANTS[step](spec):
        entry: dict[str, Any] = {"name": variant.name, "changes": variant.changes, **run(variant)}
        if entry["held_out"] is None:  # no optimizer step: the weights are the untrained ones
            entry["held_out"], entry["evaluated_as"] = baseline["held_out"], "untrained (no optimizer step was taken)"
        entry["held_out"] = summarized(entry["held_out"], spec, seed)
        entry["vs_untrained"] = compare(entry["held_out"], baseline["held_out"], spec.bootstrap_samples, seed)
        entries.append(entry)
    adjust_across_variants(entries)
    if step == "big_to_small":
        source, target = entries
        target["vs_source"] = compare(target["held_out"], source["held_out"], spec.bootstrap_samples, seed)
    return {"step": step, "untrained": baseline, "variants": entries, "caveats": caveats(step, spec, baseline, entries)}


def adjust_across_variants(entries: list[dict[str, Any]]) -> None:
    """Add ``p_holm`` (and the family size) to each variant's paired test against the untrained model:
    Holm's adjustment over the step's variants, per metric."""
    for metric in METRICS:
        tests = [entry["vs_untrained"]["delta"][metric].get("test") for entry in entries]
        adjusted = holm([t["p_value"] if t else None for t in tests])
        family = sum(t is not None for t in tests)
        for test, p in zip(tests, adjusted):
            if test is not None:
                test["p_holm"], test["holm_family"] = p, family


def caveats(step: str, spec: ExperimentSpec, baseline: dict[str, Any], entries: list[dict[str, Any]]) -> list[str]:
    """Plain-language warnings derived from the results (read them before reading a difference)."""
    notes = []
    n = baseline["held_out"]["num_problems"]
    if n < 100:
        notes.append(f"{n} held-out problems: the 95% intervals are wide; overlapping intervals are no difference")
    for entry in entries:
        if entry.get("note"):
            notes.append(f"{entry['name']}: {entry['note']}")
        if entry.get("buffer", {}).get("size") and entry["buffer"]["problems_solved"] == 0:
            notes.append(f"{entry['name']}: no sampled training program passed all tests (buffer holds failures only)")
    if step == "big_to_small" and entries[0]["model"] == baseline["model"]:
        notes.append("source and target are the same model: this checks the big-to-small plumbing, not its effect")
    return notes
