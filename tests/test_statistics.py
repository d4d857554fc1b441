"""Paired tests and multiplicity control of the campaign statistics, and the pass@k > 1 refusal for beams."""

from __future__ import annotations

import math

import pytest

from egcfg_pl.experiments.report import _table
from egcfg_pl.experiments.stats import exact_mcnemar_p, holm, paired_delta, sign_test, wilson_interval
from egcfg_pl.experiments.steps import adjust_across_variants
from egcfg_pl.sampling.settings import GenerationSettings


def test_exact_mcnemar_known_values():
    assert exact_mcnemar_p(0, 5) == pytest.approx(2 / 32)  # 5 discordant, all one way: 2 · (1/2)^5
    assert exact_mcnemar_p(9, 1) == pytest.approx(2 * 11 / 1024)  # 2 · P(Bin(10, ½) <= 1)
    assert exact_mcnemar_p(1, 9) == exact_mcnemar_p(9, 1)  # two-sided
    assert exact_mcnemar_p(3, 3) == 1.0 and exact_mcnemar_p(0, 0) == 1.0
    # 2 more problems solved out of 20 is nowhere near significant, whatever a bootstrap interval suggests
    assert exact_mcnemar_p(2, 0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="discordant"):
        exact_mcnemar_p(-1, 2)


def test_sign_test_counts_discordant_problems_and_names_the_method():
    binary = sign_test([1, 0, 0, 1, -1, 0, 1])
    assert binary == {"method": "exact McNemar", "better": 3, "worse": 1, "ties": 3, "p_value": exact_mcnemar_p(3, 1)}
    graded = sign_test([0.5, -0.25, 0.0, 0.75])  # pass@1 = c/n with several answers per problem
    assert graded["method"] == "exact sign test" and (graded["better"], graded["worse"], graded["ties"]) == (2, 1, 1)


def test_holm_adjustment_known_values():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])  # 3·0.01, max(0.03, 2·0.03), max(.06, .04)
    assert holm([None, 0.02, 0.5]) == [None, pytest.approx(0.04), pytest.approx(0.5)]
    assert holm([0.9, 0.8]) == [1.0, 1.0]  # 2·0.8 capped at 1, and never below an earlier step
    assert holm([0.2, 0.01]) == pytest.approx([0.2, 0.02])
    assert holm([]) == []


def test_paired_delta_reports_the_exact_test_with_discordant_counts():
    base = {f"p{i}": 0.0 for i in range(20)}
    tuned = dict(base, p0=1.0, p1=1.0)  # two more problems solved out of 20
    delta = paired_delta(tuned, base, samples=500)
    assert delta["mean"] == pytest.approx(0.1) and delta["ci95_adjusted"] is False
    test = delta["test"]
    assert (test["method"], test["better"], test["worse"], test["ties"]) == ("exact McNemar", 2, 0, 18)
    assert test["p_value"] == pytest.approx(0.5)
    assert paired_delta({}, base)["test"] is None


def _entry(name: str, better: int, worse: int, n: int = 20) -> dict:
    """A step entry as ``assemble`` builds it, from discordant counts on ``n`` pass/fail problems."""
    base = {f"p{i}": 0.0 if i < n - worse else 1.0 for i in range(n)}
    tuned = {f"p{i}": 1.0 if i < better else (0.0 if i >= n - worse else base[f"p{i}"]) for i in range(n)}
    deltas = {m: paired_delta(tuned, base, samples=200) for m in ("pass@1", "avg_pass_rate")}
    held = {m: {"mean": 0.5, "ci95": [0.3, 0.7]} for m in ("pass@1", "avg_pass_rate")}
    return {"name": name, "held_out": held, "vs_untrained": {"rsr_pass@1": 1.0, "delta": deltas}}


def test_holm_is_applied_across_a_steps_variants_and_reported():
    entries = [_entry("a", 6, 0), _entry("b", 2, 0), _entry("c", 1, 1)]
    adjust_across_variants(entries)
    tests = [e["vs_untrained"]["delta"]["pass@1"]["test"] for e in entries]
    raw = [t["p_value"] for t in tests]
    assert raw == pytest.approx([exact_mcnemar_p(6, 0), 0.5, 1.0])
    assert [t["p_holm"] for t in tests] == pytest.approx(holm(raw)) and all(t["holm_family"] == 3 for t in tests)
    assert tests[0]["p_holm"] == pytest.approx(3 * 2 / 64)  # 0.03125 unadjusted reads as significant; 0.094 does not
    result = {"untrained": {"held_out": entries[0]["held_out"]}, "variants": entries}
    table = "\n".join(_table(result))
    assert "unadjusted" in table and "Holm" in table
    assert f"+6/−0, p {raw[0]:.3f}, Holm {tests[0]['p_holm']:.3f}" in table


def test_wilson_interval_for_pass_at_1():
    lo, hi = wilson_interval(10, 20)
    assert lo == pytest.approx(0.2993, abs=1e-4) and hi == pytest.approx(0.7007, abs=1e-4)
    assert wilson_interval(0, 20)[0] == 0.0 and wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(21, 20)


def _beam(n: int) -> GenerationSettings:
    return GenerationSettings(strategy="beam", num_beams=n, num_return_sequences=n, progress=False)


def test_pass_at_k_above_one_from_beams_is_refused_in_the_module():
    from egcfg_pl.lightning.module import BTPModule

    with pytest.raises(ValueError, match=r"model\.pass_k \[2, 4\].*not i\.i\.d\..*model\.evaluation\.strategy: sample"):
        BTPModule(evaluation=_beam(4), pass_k=[1, 2, 4])
    assert BTPModule(evaluation=_beam(4), pass_k=[1]).pass_k == [1]
