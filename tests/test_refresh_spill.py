"""A refresh killed half-way resumes from its spill: tested problems are not sampled again, results equal."""

from __future__ import annotations

import dataclasses
import json

import lightning as L
import pytest

from btp_helpers import refresh_callback, tiny_datamodule, tiny_module, tiny_trainer
from egcfg_pl.lightning.refresh_spill import RefreshSpill


class Killed(RuntimeError):
    """Stands in for a kill (Lightning turns a real KeyboardInterrupt into SystemExit)."""


class CountingSampler:
    """Wraps the real sampler; records which problems it was asked for; can fail on the n-th call."""

    def __init__(self, inner, log: list[list[str]], fail_on_call: int | None):
        self.inner, self.log, self.fail_on_call = inner, log, fail_on_call

    def sample(self, problems, *, iteration=0, stream=()):
        self.log.append([p.id for p in problems])
        if self.fail_on_call is not None and len(self.log) == self.fail_on_call:
            raise Killed("simulated kill in the middle of a refresh")
        return self.inner.sample(problems, iteration=iteration)


def refresh_with(log, fail_on_call=None, **kwargs):
    refresh = refresh_callback(chunk_problems=2, **kwargs)
    real = refresh.sampler
    refresh.sampler = lambda pl_module: CountingSampler(real(pl_module), log, fail_on_call)
    return refresh


def fit(root, model_dir, refresh, ckpt_path=None, edit=None):
    """A 1-epoch fit that keeps ``last.ckpt`` (a fresh fit writes its starting state there at once);
    ``edit`` changes the training problems before the fit."""
    L.seed_everything(0)  # the same fresh LoRA weights on every attempt (they are part of the fingerprint)
    module, dm = tiny_module(model_dir), tiny_datamodule(train=4)
    if edit is not None:
        dm.train_problems = [edit(p) for p in dm.train_set.load()]
    keep_last = L.pytorch.callbacks.ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True)
    tiny_trainer(root, 1, [refresh, keep_last]).fit(module, dm, ckpt_path=ckpt_path)
    return dm


def buffer_rows(dm):
    """What a refresh decides (timings aside): problem, program, log-prob, pass rate, P2Value."""
    return sorted((e.problem_id, e.program, round(e.candidate.logprob, 3), e.pass_rate, round(e.p2value, 6))
                  for e in dm.buffer.experiences)


def test_killed_refresh_resumes_without_resampling(tmp_path, tiny_model_dir):
    calls: list[list[str]] = []
    with pytest.raises(Killed):
        fit(tmp_path / "run", tiny_model_dir, refresh_with(calls, fail_on_call=2))
    first_chunk = calls[0]
    spill = list((tmp_path / "run" / "refresh_spill").glob("epoch0_rank0.jsonl"))
    assert spill and len(spill[0].read_text().splitlines()) == len(first_chunk) == 2

    again: list[list[str]] = []
    resumed = fit(tmp_path / "run", tiny_model_dir, refresh_with(again), ckpt_path="last")
    assert [pid for chunk in again for pid in chunk] == calls[1]  # only the problems the kill cut off
    assert not (tmp_path / "run" / "refresh_spill").exists()  # the finished fit removed it

    clean = fit(tmp_path / "clean", tiny_model_dir, refresh_with([]))
    assert buffer_rows(resumed) == buffer_rows(clean)


def one_more_test(problem):
    """The issue's edit: a problem gains a test (mbpp/645: 3 -> 4 tests)."""
    return dataclasses.replace(problem, tests=(*problem.tests, problem.tests[0]))


def assert_edited_verdicts(dm):
    """Every verdict ran the edited tests (one more than the file's), none is a stale one from the spill."""
    tests = {p.id: len(p.tests) for p in dm.train_problems}
    assert all(len(e.verdict.results) == tests[e.problem_id] for e in dm.buffer.experiences)
    assert all(len(p.tests) == len(q.tests) + 1 for p, q in zip(dm.train_problems, dm.train_set.load()))


def test_fresh_fit_after_a_kill_removes_the_spill_and_samples_everything(tmp_path, tiny_model_dir):
    with pytest.raises(Killed):
        fit(tmp_path / "run", tiny_model_dir, refresh_with([], fail_on_call=2))
    assert (tmp_path / "run" / "refresh_spill").is_dir()
    calls: list[list[str]] = []
    dm = fit(tmp_path / "run", tiny_model_dir, refresh_with(calls), edit=one_more_test)  # no ckpt_path: fresh
    assert len([pid for chunk in calls for pid in chunk]) == 4
    assert_edited_verdicts(dm)


def test_resume_after_a_problem_edit_does_not_reuse_the_spill(tmp_path, tiny_model_dir):
    with pytest.raises(Killed):
        fit(tmp_path / "run", tiny_model_dir, refresh_with([], fail_on_call=2))
    calls: list[list[str]] = []
    dm = fit(tmp_path / "run", tiny_model_dir, refresh_with(calls), ckpt_path="last", edit=one_more_test)
    assert len([pid for chunk in calls for pid in chunk]) == 4  # the problems' fingerprint changed
    assert_edited_verdicts(dm)


def test_spill_of_other_weights_is_not_reused(tmp_path, tiny_model_dir):
    with pytest.raises(Killed):
        fit(tmp_path / "run", tiny_model_dir, refresh_with([], fail_on_call=2))
    calls: list[list[str]] = []
    L.seed_everything(1)  # other LoRA init: a different model state samples different candidates
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule(train=4)
    tiny_trainer(tmp_path / "run", 1, [refresh_with(calls)]).fit(module, dm)
    assert len([pid for chunk in calls for pid in chunk]) == 4  # everything sampled again


def test_spill_ignores_torn_and_foreign_lines_and_prunes_old_epochs(tmp_path):
    old = RefreshSpill(tmp_path, epoch=0, rank=0, fingerprint="a")
    old.append("p/1", [])
    spill = RefreshSpill(tmp_path, epoch=1, rank=0, fingerprint="b")
    spill.append("p/1", [])
    with open(spill.path, "a") as f:
        f.write(json.dumps({"fingerprint": "other", "problem_id": "p/2", "experiences": []}) + "\n")
        f.write('{"fingerprint": "b", "problem_id": "p/3", "experi')  # torn by a kill
    assert list(spill.load()) == ["p/1"]
    other_rank = RefreshSpill(tmp_path, epoch=0, rank=1, fingerprint="a")
    other_rank.append("p/1", [])
    spill.remove_older()
    assert not old.path.exists() and spill.path.exists() and other_rank.path.exists()
