"""DDP on CPU: every rank samples its shard, all ranks end with the identical buffer, each rank trains on its
own slice of every replay draw, training completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent / "ddp_fit_script.py"


def test_ddp_two_cpu_ranks_share_one_buffer(tmp_path, tiny_model_dir, shared_data):  # MBPP via EGCFG_DATA_DIR
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tiny_model_dir), str(tmp_path)],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (json.loads((tmp_path / f"rank{i}.json").read_text()) for i in (0, 1))
    assert r0["world_size"] == 2
    assert r0["experiences"] and r0["experiences"] == r1["experiences"]
    assert r0["rng"] == r1["rng"]
    problems = {e["candidate"]["problem_id"] for e in r0["experiences"]}
    assert len(problems) == 6  # the two shards together cover every training problem
    assert r0["global_step"] > 0 and r0["global_step"] == r1["global_step"]
    assert r0["lora_sum"] == r1["lora_sum"]  # DDP kept the replicas in sync (all-reduce guarantees this much)
    # each step draws one batch per rank from the shared buffer, and each rank trains on its own slice of it
    b = r0["batch_size"]
    assert r0["draws"] == r1["draws"] and len(r0["draws"]) == r0["global_step"]  # same buffer, same RNG
    assert all(len(draw) == 2 * b for draw in r0["draws"])
    assert r0["trained"] == [draw[:b] for draw in r0["draws"]]
    assert r1["trained"] == [draw[b:] for draw in r1["draws"]]
    assert r0["batches_trained"] == r1["batches_trained"] == len(r0["trained"])  # every yielded batch was a step
    assert r0["trained"] != r1["trained"]  # so the ranks saw different data, not one batch twice
    # 3 held-out problems on 2 ranks: the sampler's padding repeat of problem 0 on rank 1 is counted once
    assert r0["val"]["num_problems"] == 3 and r1["val"]["num_problems"] == 3
    report = json.loads(Path(r0["val"]["path"]).read_text())
    assert len(report["problems"]) == 3 and report["metrics"]["num_problems"] == 3
