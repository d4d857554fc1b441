"""Replay buffer: P2Value, both prioritized distributions against hand-computed values, state round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from egcfg_pl.replay import ReplayBuffer, ReplaySettings, normalize_program, p2value, sampling_probabilities
from egcfg_pl.replay.experience import Experience
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict


def make_exp(pid: str, program: str, logprob: float | None, tokens: int, passed: int, total: int, alpha=0.5):
    results = tuple(TestResult(Status.PASSED if i < passed else Status.FAILED, 0.01) for i in range(total))
    cand = Candidate(pid, program, program, logprob, tokens)
    return Experience.build(cand, Verdict(pid, results, 0.1), alpha=alpha)


def test_p2value_formula_uses_alpha():
    assert p2value(0.8, 0.25, 0.5) == pytest.approx(0.525)
    assert p2value(0.8, 0.25, 0.0) == pytest.approx(0.25)
    assert p2value(0.8, 0.25, 1.0) == pytest.approx(0.8)
    assert p2value(0.8, 0.25, 0.3) == pytest.approx(0.3 * 0.8 + 0.7 * 0.25)
    assert p2value(None, 0.25, 0.9) == pytest.approx(0.25)  # unknown possibility: pass rate alone
    with pytest.raises(ValueError, match="p2value_alpha"):
        p2value(0.5, 0.5, 1.5)


def test_experience_possibility_forms_are_not_double_normalised():
    exp = make_exp("p", "x=1", logprob=-10.0, tokens=20, passed=1, total=2, alpha=0.5)
    assert exp.possibility == pytest.approx(math.exp(-0.5))  # exp(logprob / tokens), once
    assert exp.p2value == pytest.approx(0.5 * math.exp(-0.5) + 0.5 * 0.5)
    raw = Experience.build(exp.candidate, exp.verdict, alpha=0.5, form="raw")
    assert raw.possibility == pytest.approx(math.exp(-10.0))


def test_power_and_rank_match_hand_computed_values():
    p2 = [0.2, 0.6, 0.4]
    power = sampling_probabilities(p2, [0, 0, 0], [None] * 3, strategy="power", alpha=2.0, epsilon=0.0)
    expected = np.array([0.04, 0.36, 0.16]) / 0.56
    np.testing.assert_allclose(power, expected)
    rank = sampling_probabilities(p2, [0, 0, 0], [None] * 3, strategy="rank", alpha=1.0)
    # ranks: 0.6 -> 1, 0.4 -> 2, 0.2 -> 3  =>  p = [1/3, 1, 1/2]
    np.testing.assert_allclose(rank, np.array([1 / 3, 1.0, 0.5]) / (1 / 3 + 1 + 0.5))
    rank2 = sampling_probabilities(p2, [0, 0, 0], [None] * 3, strategy="rank", alpha=2.0)
    np.testing.assert_allclose(rank2, np.array([1 / 9, 1.0, 0.25]) / (1 / 9 + 1 + 0.25))
    uniform = sampling_probabilities(p2, [0, 0, 0], [None] * 3, strategy="uniform")
    np.testing.assert_allclose(uniform, [1 / 3] * 3)
    zero_a = sampling_probabilities(p2, [0, 0, 0], [None] * 3, strategy="power", alpha=0.0)
    np.testing.assert_allclose(zero_a, [1 / 3] * 3)


def test_ablation_strategies_use_their_own_score():
    pr = sampling_probabilities([0.5, 0.5], [1.0, 0.0], [0.1, 0.9], strategy="pass_rate", epsilon=0.0)
    np.testing.assert_allclose(pr, [1.0, 0.0])
    po = sampling_probabilities([0.5, 0.5], [1.0, 0.0], [0.1, 0.3], strategy="possibility", epsilon=0.0)
    np.testing.assert_allclose(po, [0.25, 0.75])
    with pytest.raises(ValueError, match="unknown"):
        sampling_probabilities([0.5], [0.5], [0.5], strategy="greedy")
    with pytest.raises(ValueError, match="empty"):
        sampling_probabilities([], [], [], strategy="power")


@pytest.mark.parametrize(
    "strategy, alpha, expected",
    [
        ("power", 2.0, [1 / 14, 4 / 14, 9 / 14]),  # p = 1/4, 2/4, 3/4: p^2 / Σ p^2 = (1, 4, 9) / 14
        ("rank", 1.0, [2 / 11, 3 / 11, 6 / 11]),  # ranks 3, 2, 1: (1/3, 1/2, 1) / (11/6)
        ("uniform", 1.0, [1 / 3, 1 / 3, 1 / 3]),
    ],
)
def test_draw_frequencies_follow_the_distribution(strategy, alpha, expected):
    # the expected frequencies are written out by hand from Eq. 6, not taken from the buffer
    buf = ReplayBuffer(ReplaySettings(strategy=strategy, sampling_alpha=alpha, seed=3))
    buf.add([make_exp("a", "x=1", None, 1, 1, 4), make_exp("b", "x=2", None, 1, 2, 4), make_exp("c", "x=3", None, 1, 3, 4)])
    draws = buf.sample_indices(30_000)
    freq = np.bincount(draws, minlength=3) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.015)


def test_rank_ties_share_the_average_rank_whatever_the_insertion_order():
    tied = sampling_probabilities([0.5] * 4, [0] * 4, [None] * 4, strategy="rank", alpha=1.0)
    np.testing.assert_allclose(tied, [0.25] * 4)  # not 0.48 / 0.24 / 0.16 / 0.12 by position
    # 0.6 twice shares ranks 1-2 (1.5 each), 0.4 is rank 3, 0.2 rank 4
    mixed = sampling_probabilities([0.2, 0.6, 0.4, 0.6], [0] * 4, [None] * 4, strategy="rank", alpha=1.0)
    weights = np.array([1 / 4, 1 / 1.5, 1 / 3, 1 / 1.5])
    np.testing.assert_allclose(mixed, weights / weights.sum())
    buf = ReplayBuffer(ReplaySettings(strategy="rank", p2value_alpha=0.0))  # α = 0: P2Value = pass rate
    buf.add([make_exp(pid, f"x={pid}", None, 1, 1, 2) for pid in "abcd"])
    np.testing.assert_allclose(buf.probabilities(), [0.25] * 4)


def test_power_draws_do_not_underflow_for_large_exponents():
    probs = sampling_probabilities([0.3, 0.2, 0.3], [0] * 3, [None] * 3, strategy="power", alpha=1000.0, epsilon=0.0)
    assert np.all(np.isfinite(probs))  # 0.3^1000 underflows to 0 in float64: 0 / 0 = NaN before
    np.testing.assert_allclose(probs, [0.5, 0.0, 0.5], atol=1e-12)  # (0.2/0.3)^1000 ~ 1e-176
    assert probs.sum() == pytest.approx(1.0)
    rank = sampling_probabilities([0.3, 0.2, 0.1], [0] * 3, [None] * 3, strategy="rank", alpha=2000.0)
    np.testing.assert_allclose(rank, [1.0, 0.0, 0.0], atol=1e-12)


def test_power_draws_with_zero_priorities():
    # a priority of exactly 0 (epsilon 0) is never drawn for a > 0, and at a = 0 everything is uniform (0^0 = 1)
    zero = sampling_probabilities([0.0, 0.5], [0] * 2, [None] * 2, strategy="power", alpha=1.0, epsilon=0.0)
    np.testing.assert_allclose(zero, [0.0, 1.0])
    np.testing.assert_allclose(
        sampling_probabilities([0.0, 0.5], [0] * 2, [None] * 2, strategy="power", alpha=0.0, epsilon=0.0), [0.5, 0.5]
    )
    # all zero: no entry is preferred, so the draw is uniform rather than 0 / 0
    np.testing.assert_allclose(
        sampling_probabilities([0.0, 0.0], [0] * 2, [None] * 2, strategy="power", alpha=3.0, epsilon=0.0), [0.5, 0.5]
    )
    # the default epsilon keeps a failed program reachable but far below one that passes, even for large a
    eps = sampling_probabilities([0.0, 0.5], [0] * 2, [None] * 2, strategy="power", alpha=50.0)
    assert np.all(np.isfinite(eps)) and 0.0 <= eps[0] < 1e-100 and eps[1] == pytest.approx(1.0)


def test_failed_programs_are_kept_and_duplicates_merged():
    buf = ReplayBuffer()
    failed = make_exp("a", "def f():\n    return 1\n", -3.0, 5, 0, 3)
    dup = make_exp("a", "def f():  # same program\n\n    return 1", -1.0, 5, 0, 3)
    other_problem = make_exp("b", "def f():\n    return 1\n", -3.0, 5, 3, 3)
    assert buf.add([failed, dup, other_problem]) == 2
    assert len(buf) == 2
    stored = {e.problem_id: e for e in buf.experiences}
    assert stored["a"].candidate.logprob == -1.0  # the newer duplicate replaced the older
    assert stored["a"].pass_rate == 0.0


def test_normalize_program_keeps_hashes_inside_strings():
    assert normalize_program('print("#")  # note') == 'print("#")'
    assert normalize_program("x = 1\n\n# c\ny = 2  ") == "x = 1\ny = 2"


def test_capacity_evicts_lowest_p2value_or_oldest():
    exps = [make_exp("p", f"x={i}", None, 1, passed, 4) for i, passed in enumerate([3, 0, 4, 1])]
    low = ReplayBuffer(ReplaySettings(capacity=2))
    low.add(exps)
    assert sorted(e.program for e in low.experiences) == ["x=0", "x=2"]
    fifo = ReplayBuffer(ReplaySettings(capacity=2, eviction="oldest"))
    fifo.add(exps)
    assert sorted(e.program for e in fifo.experiences) == ["x=2", "x=3"]


def test_state_dict_round_trip_restores_contents_and_rng_stream():
    buf = ReplayBuffer(ReplaySettings(strategy="rank", seed=7))
    buf.add([make_exp("p", f"x={i}", -float(i + 1), 3, i % 3, 2 + i % 2) for i in range(6)])
    buf.sample_indices(5)
    state = buf.state_dict()
    restored = ReplayBuffer(ReplaySettings(strategy="rank", seed=999))
    restored.load_state_dict(state)
    assert [e for e in restored.experiences] == buf.experiences
    np.testing.assert_array_equal(restored.sample_indices(50), buf.sample_indices(50))
    assert restored.stats() == pytest.approx(buf.stats(), nan_ok=True)


def test_settings_reject_bad_values_with_field_names():
    with pytest.raises(ValueError, match=r"data\.replay\.p2value_alpha .*must be in \[0, 1\]"):
        ReplaySettings(p2value_alpha=2)
    with pytest.raises(ValueError, match=r"data\.replay\.strategy .*'best' is unknown"):
        ReplaySettings(strategy="best")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sampling_alpha": -0.5},
         r"data\.replay\.sampling_alpha must be"),
        ({"sampling_alpha": float("nan")}, r"data\.replay\.sampling_alpha"),
        ({"sampling_alpha": float("inf")}, r"data\.replay\.sampling_alpha"),
        ({"min_pass_rate": 1.5}, r"data\.replay\.min_pass_rate .*must be in \[0, 1\].*got 1\.5"),
        ({"min_pass_rate": -0.1}, r"data\.replay\.min_pass_rate"),
        ({"capacity": 0}, r"data\.replay\.capacity .*must be >= 1"),
        ({"eviction": "random"}, r"data\.replay\.eviction .*'random' is unknown"),
        ({"possibility_form": "log"}, r"data\.replay\.possibility_form .*'log' is unknown"),
    ],
)
def test_settings_fail_at_construction_naming_the_yaml_path(changes, message):
    """Bad values fail when the config is read, not at the first draw (or by silently emptying the buffer)."""
    with pytest.raises(ValueError, match=message):
        ReplaySettings(**changes)


def saved_buffer(settings: ReplaySettings) -> tuple[ReplayBuffer, dict]:
    buf = ReplayBuffer(settings)
    exps = [make_exp("p", f"x={i}", -float(i + 1), 4, i % 3, 2) for i in range(6)]  # pass rates 0, .5, 1
    buf.add([Experience.build(e.candidate, e.verdict, settings.p2value_alpha, settings.possibility_form) for e in exps])
    buf.sample_indices(3)
    return buf, buf.state_dict()


def test_restore_rescores_entries_under_changed_settings(caplog):
    _, state = saved_buffer(ReplaySettings(p2value_alpha=0.5, possibility_form="normalized"))
    restored = ReplayBuffer(ReplaySettings(p2value_alpha=0.2, possibility_form="raw"))
    with caplog.at_level("WARNING", logger="egcfg_pl.replay.buffer"):
        restored.load_state_dict(state)
    assert len(restored) == 6
    for exp in restored.experiences:
        rebuilt = Experience.build(exp.candidate, exp.verdict, alpha=0.2, form="raw")
        assert (exp.possibility, exp.p2value) == (rebuilt.possibility, rebuilt.p2value)
        assert exp.possibility == pytest.approx(math.exp(exp.candidate.logprob))  # raw, not per token
    assert "data.replay.p2value_alpha" in caplog.text and "0.5 -> 0.2" in caplog.text
    assert "'normalized' -> 'raw'" in caplog.text


def test_restore_reapplies_min_pass_rate_and_capacity(caplog):
    _, state = saved_buffer(ReplaySettings())
    strict = ReplayBuffer(ReplaySettings(min_pass_rate=1.0))
    with caplog.at_level("WARNING", logger="egcfg_pl.replay.buffer"):
        strict.load_state_dict(state)
    assert sorted(e.program for e in strict.experiences) == ["x=2", "x=5"] and "dropped 4 entries" in caplog.text
    small = ReplayBuffer(ReplaySettings(capacity=2))
    small.load_state_dict(state)
    assert len(small) == 2 and all(e.pass_rate == 1.0 for e in small.experiences)  # lowest P2Values evicted


def test_restore_with_same_settings_is_exact_and_silent(caplog):
    settings = ReplaySettings(p2value_alpha=0.3, possibility_form="raw", strategy="rank", sampling_alpha=2.0, seed=4)
    buf, state = saved_buffer(settings)
    restored = ReplayBuffer(ReplaySettings(p2value_alpha=0.3, possibility_form="raw", strategy="rank", sampling_alpha=2.0))
    with caplog.at_level("WARNING", logger="egcfg_pl.replay.buffer"):
        restored.load_state_dict(state)
    assert caplog.text == ""  # only the seed differs, and the saved RNG state replaces it
    assert restored.experiences == buf.experiences and restored.state_dict() == buf.state_dict() | {
        "settings": restored.state_dict()["settings"]
    }
    np.testing.assert_array_equal(restored.sample_indices(40), buf.sample_indices(40))


def test_unset_replay_seed_follows_the_run_seed(monkeypatch):
    import lightning as L

    def draws(settings: ReplaySettings) -> list[int]:
        buf = ReplayBuffer(settings)
        buf.add([make_exp(pid, f"x={pid}", None, 1, 1, 2) for pid in "abcdefgh"])
        return buf.sample_indices(40).tolist()

    monkeypatch.setenv("PL_GLOBAL_SEED", "0")  # restored after the test
    L.seed_everything(1, verbose=False)
    first, pinned_first = draws(ReplaySettings()), draws(ReplaySettings(seed=7))
    L.seed_everything(2, verbose=False)
    second, pinned_second = draws(ReplaySettings()), draws(ReplaySettings(seed=7))
    assert first != second  # seed_everything changes the draw stream ...
    assert pinned_first == pinned_second  # ... unless the replay seed is set explicitly
    L.seed_everything(1, verbose=False)
    assert draws(ReplaySettings()) == first  # and the same run seed reproduces it


def test_settings_saved_under_the_old_possibility_name_still_load(caplog):
    """``possibility`` (a form name, while ``possibility`` is a float elsewhere) is now ``possibility_form``:
    settings pickled in an older checkpoint's hyper-parameters, and its buffer state, still restore under it."""
    import pickle

    old = ReplaySettings(p2value_alpha=0.3, possibility_form="raw")
    state = old.__dict__.copy()
    state["possibility"] = state.pop("possibility_form")
    restored = ReplaySettings.__new__(ReplaySettings)
    restored.__setstate__(state)  # what unpickling an old checkpoint's hyper-parameters does
    assert restored == old and pickle.loads(pickle.dumps(old)) == old
    _, buffer_state = saved_buffer(ReplaySettings(possibility_form="raw"))
    buffer_state["settings"]["possibility"] = buffer_state["settings"].pop("possibility_form")
    with caplog.at_level("WARNING"):
        ReplayBuffer(ReplaySettings(possibility_form="normalized")).load_state_dict(buffer_state)
    assert "data.replay.possibility_form: 'raw' -> 'normalized'" in caplog.text  # the old key is still compared


def test_the_old_possibility_key_in_a_config_names_the_new_one():
    from egcfg_pl.lightning.cli import run_lightning_cli
    from egcfg_pl.user_errors import UsageError

    with pytest.raises(UsageError, match=r"data\.replay\.possibility.*did you mean data\.replay\.possibility_form"):
        run_lightning_cli(["fit", "--data.held_out.dataset", "mbpp", "--data.replay.possibility", "raw"])
