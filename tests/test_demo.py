"""The demo's summary text (the demo itself runs the embedded model: ``make demo``)."""

from __future__ import annotations

from egcfg_pl.experiments.demo import rsr_line


def test_rsr_line_has_no_inf_for_a_zero_baseline():
    assert rsr_line(0.3, 0.2).endswith(": 1.50")
    assert rsr_line(0.1, 0.0).endswith(": n/a (baseline solved none)")  # RSR would be inf
    assert rsr_line(0.0, 0.0).endswith(": n/a (baseline solved none)")  # and nan here
    assert "inf" not in rsr_line(0.1, 0.0) and "nan" not in rsr_line(0.0, 0.0)
