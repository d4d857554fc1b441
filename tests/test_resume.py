"""Kills, Ctrl-C and resumes of a real (tiny) fit in a subprocess: nothing lost, nothing written twice, and the
resumed fit reproduces the uninterrupted one's losses (RNG states restored; LoRA dropout is on)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent / "resume_fit_script.py"


def fit(model_dir: Path, root: Path, name: str, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    out = root.parent / f"{name}.json"
    proc = subprocess.run([sys.executable, str(SCRIPT), str(model_dir), str(root), str(out), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    return proc, (json.loads(out.read_text()) if out.exists() else {})


def experiences(root: Path) -> list[tuple]:
    """experiences.jsonl without the sandbox's wall-clock timings."""
    rows = [json.loads(line) for line in (root / "experiences.jsonl").read_text().splitlines()]
    return [(r["epoch"], r["candidate"]["problem_id"], r["candidate"]["program"],
             [t["status"] for t in r["verdict"]["results"]]) for r in rows]


@pytest.fixture(scope="module")
def straight(tiny_model_dir, tmp_path_factory, shared_data) -> tuple[Path, dict]:
    """The uninterrupted 2-epoch fit (the script trains on MBPP from the data folder: skips without it)."""
    root = tmp_path_factory.mktemp("straight") / "run"
    proc, out = fit(tiny_model_dir, root, "straight")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, out


def assert_same_losses(resumed: dict, straight: dict) -> None:
    assert resumed["step"] == straight["step"] == 4 and resumed["epoch"] == 2
    for step, loss in resumed["losses"].items():
        assert loss == pytest.approx(straight["losses"][step], rel=1e-6, abs=1e-6), f"step {step}"


def test_sigkill_in_training_resume_writes_each_experience_once_with_the_same_losses(tmp_path, tiny_model_dir,
                                                                                     straight):
    root = tmp_path / "run"
    proc, _ = fit(tiny_model_dir, root, "killed", "--kill", "sigkill", "--at", "1:0")
    assert proc.returncode == -9  # killed in epoch 1, after its refresh was written
    proc, resumed = fit(tiny_model_dir, root, "resumed", "--ckpt_path", "last", "--seed", "123")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed["sampled"] == []  # epoch 1's refresh came back from the spill
    assert sorted(resumed["losses"]) == ["3", "4"]  # epoch 1 was trained again, from the epoch-0 checkpoint
    assert_same_losses(resumed, straight[1])
    assert experiences(root) == experiences(straight[0])  # epoch 0 and 1 once each, in order
    assert not (root / "refresh_spill").exists()  # removed once the fit finished
    assert not list((root / "tb").glob("version_*")), "a resume continues the run's TensorBoard folder"


def test_sigint_saves_a_checkpoint_prints_the_resume_and_the_resume_completes(tmp_path, tiny_model_dir, straight):
    root = tmp_path / "run"  # no ModelCheckpoint: only the Ctrl-C handler writes a checkpoint
    proc, _ = fit(tiny_model_dir, root, "interrupted", "--kill", "sigint", "--at", "1:1", "--no_checkpoint")
    assert proc.returncode == 1, proc.stderr[-3000:]
    ckpt = root / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    assert "Resume with:" in proc.stdout and str(ckpt) in proc.stdout
    proc, resumed = fit(tiny_model_dir, root, "resumed", "--ckpt_path", str(ckpt), "--no_checkpoint", "--seed", "5")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert resumed["sampled"] == []
    assert_same_losses(resumed, straight[1])
    assert experiences(root) == experiences(straight[0])


def test_sigkill_in_the_first_refresh_resumes_from_the_spill_without_a_misleading_warning(tmp_path, tiny_model_dir,
                                                                                          straight):
    root = tmp_path / "run"
    proc, _ = fit(tiny_model_dir, root, "killed", "--kill", "sigkill", "--kill_on_sample", "2")
    assert proc.returncode == -9  # during the second chunk of the epoch-0 refresh: no epoch has ended
    assert (root / "checkpoints" / "last.ckpt").is_file()  # the fit's starting state
    proc, resumed = fit(tiny_model_dir, root, "resumed", "--ckpt_path", "last", "--seed", "7")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no last checkpoint" not in proc.stdout + proc.stderr
    assert [p.name for p in (root / "checkpoints").glob("last*")] == ["last.ckpt"]  # no last-v1.ckpt beside it
    assert resumed["sampled"] == straight[1]["sampled"][1:]  # all but the chunk tested before the kill
    assert_same_losses(resumed, straight[1])
    assert experiences(root) == experiences(straight[0])


def test_validation_leaves_the_global_rng_alone(tmp_path, tiny_model_dir, shared_data):
    """A validation between epochs must not move the torch RNG that training (LoRA dropout) draws from: an
    uninterrupted fit validates before epoch E+1, and a fit resumed from the end of epoch E must draw the same."""
    import lightning as L
    import torch

    from btp_helpers import tiny_datamodule, tiny_module, tiny_trainer

    L.seed_everything(0)
    module, dm = tiny_module(tiny_model_dir), tiny_datamodule()
    module.configure_model()  # the LoRA init draws; validation must not
    before = torch.get_rng_state()
    tiny_trainer(tmp_path, 1, [], limit_val_batches=1).validate(module, dm)
    assert torch.equal(torch.get_rng_state(), before)
