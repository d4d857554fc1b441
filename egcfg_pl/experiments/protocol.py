"""The pre-registered comparison (``benchmarks/results/btp_mbpp_smollm2/PROTOCOL.md``) as a campaign step.

Variants: sample_and_filter, btp_power (the paper's default), btp_rank, uniform, pass_rate_only, all from the same
iteration-0 samples and seed, against the untrained model. Per held-out set (MBPP test, HumanEval, ...):

- pass@1 per variant with its 95% Wilson interval, and the average test pass rate with a bootstrap interval;
- paired against the untrained model (family: the 5 trained variants) and against sample_and_filter (family: the
  4 others) and, for question 3, the prioritized-replay variants against uniform replay over the same buffer (family:
  btp_power, btp_rank, pass_rate_only): the exact McNemar test with its discordant counts, Holm-adjusted within the
  family and the set;
  the paired bootstrap interval of the difference; RSR against the untrained model where it solves something.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from egcfg_pl.experiments.spec import ExperimentSpec
from egcfg_pl.experiments.steps import METRICS, UNTRAINED, VARIANTS, Variant, caveats, compare, summarized
from egcfg_pl.experiments.stats import holm

FILTER = "sample_and_filter"
UNIFORM = "uniform"  # question 3: prioritized draws against uniform draws over the same buffer
PRIORITIZED = ("btp_power", "btp_rank", "pass_rate_only")
SELECTION_SET = "validation"  # the untrained model's validation scores: the learning curves' start, not a test set


def holm_within(rows: list[dict[str, Any]], against: str) -> None:
    """``p_holm`` (and the family size) on each row's paired test ``rows[i][against]``, per metric."""
    for metric in METRICS:
        tests = [row[against]["delta"][metric].get("test") if row.get(against) else None for row in rows]
        adjusted = holm([t["p_value"] if t else None for t in tests])
        family = sum(t is not None for t in tests)
        for test, p in zip(tests, adjusted):
            if test is not None:
                test["p_holm"], test["holm_family"] = p, family


def set_table(name: str, baseline: dict[str, Any], entries: list[dict[str, Any]], spec: ExperimentSpec,
              seed: int) -> dict[str, Any]:
    """One held-out set: every variant's summary and its paired comparisons."""
    base = summarized(baseline["evaluations"][name], spec, seed)
    rows = []
    for entry in entries:
        evaluation = (entry["evaluations"] or {}).get(name)
        row: dict[str, Any] = {"name": entry["name"]}
        if evaluation is None:  # no optimizer step: the weights are the untrained ones
            evaluation, row["evaluated_as"] = baseline["evaluations"][name], "untrained (no optimizer step was taken)"
        row["held_out"] = summarized(evaluation, spec, seed)
        row["vs_untrained"] = compare(row["held_out"], base, spec.bootstrap_samples, seed)
        rows.append(row)
    reference = next(row for row in rows if row["name"] == FILTER)
    others = [row for row in rows if row is not reference]
    for row in others:
        row[f"vs_{FILTER}"] = compare(row["held_out"], reference["held_out"], spec.bootstrap_samples, seed)
    holm_within(rows, "vs_untrained")
    holm_within(others, f"vs_{FILTER}")
    uniform = next((row for row in rows if row["name"] == UNIFORM), None)
    prioritized = [row for row in rows if row["name"] in PRIORITIZED]
    if uniform is not None:
        for row in prioritized:
            row[f"vs_{UNIFORM}"] = compare(row["held_out"], uniform["held_out"], spec.bootstrap_samples, seed)
        holm_within(prioritized, f"vs_{UNIFORM}")
    return {"untrained": {"held_out": base}, "variants": rows}


def assemble_protocol(spec: ExperimentSpec, run: Callable[[Variant], dict[str, Any]]) -> dict[str, Any]:
    """The step's JSON object: the runs (fit records) and one comparison table per held-out set."""
    baseline = dict(run(UNTRAINED))
    seed = baseline["seed"]
    entries = [{"name": v.name, "changes": v.changes, **run(v)} for v in VARIANTS["protocol"](spec)]
    sets = {name: set_table(name, baseline, entries, spec, seed) for name in baseline["evaluations"] if name != SELECTION_SET}
    first = next(iter(sets.values()))
    notes = caveats("protocol", spec, {"held_out": first["untrained"]["held_out"], "model": baseline["model"]}, entries)
    return {"step": "protocol", "untrained": baseline, "variants": entries, "sets": sets, "caveats": notes}
