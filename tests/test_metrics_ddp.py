"""Real torch.distributed sync (gloo, 2 CPU processes): each rank scores one problem, compute() sees both."""

from __future__ import annotations

import json
import multiprocessing as mp
import sys

import pytest

from test_metrics_report import run_groups  # pytest (prepend import mode) puts tests/ on sys.path

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="uses fork to start the ranks quickly")


def _rank(rank: int, world: int, init_file: str, out_file: str) -> None:
    import torch.distributed as dist

    from egcfg_pl.metrics import CodeGenMetrics

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        problem, cands, verdicts = list(run_groups().values())[rank]
        metrics = CodeGenMetrics(ks=(1, 2, 5))
        if rank == 0:
            cands, verdicts = cands[:2], verdicts[:2]  # n=2 here: pass@5 missing on rank 0 only
        metrics.update(problem, cands, verdicts, gen_seconds=1.0, gen_tokens=10 * len(cands))
        result = {
            "metrics": metrics.compute(),
            "histograms": metrics.histograms(),
            "missing": list(metrics.missing_ks()),
            "local_candidates": int(metrics.pass_rate.num_candidates),  # states are restored after sync
        }
        with open(f"{out_file}.{rank}", "w") as f:
            json.dump(result, f)
    finally:
        dist.destroy_process_group()


def test_ddp_sync_matches_single_process(tmp_path):
    from egcfg_pl.metrics import CodeGenMetrics

    ctx = mp.get_context("fork")
    out = str(tmp_path / "rank")
    procs = [ctx.Process(target=_rank, args=(r, 2, str(tmp_path / "init"), out)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]

    whole = CodeGenMetrics(ks=(1, 2, 5))
    for rank, (problem, cands, verdicts) in enumerate(run_groups().values()):
        if rank == 0:
            cands, verdicts = cands[:2], verdicts[:2]
        whole.update(problem, cands, verdicts, gen_seconds=1.0, gen_tokens=10 * len(cands))
    expected = whole.compute()
    for rank in range(2):
        with open(f"{out}.{rank}") as f:
            got = json.load(f)
        assert got["metrics"].keys() == expected.keys()
        for key, value in expected.items():
            if key != "runtime_s":  # wall-clock seconds differ between runs
                assert got["metrics"][key] == pytest.approx(value, nan_ok=True), key
        assert got["histograms"] == whole.histograms()
        assert got["missing"] == [5]
        assert got["local_candidates"] == (2, 3)[rank]
