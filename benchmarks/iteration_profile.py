"""Where one demo-sized BTP iteration spends its time, phase by phase, for any checkout of the project.

One iteration is ``cli.py fit --config configs/demo_cpu.yaml`` (max_epochs 1): the refresh (beam-5 sampling of 8
MBPP-train problems, the log-prob re-score where the code has one, the sandbox), the LoRA steps, and the
held-out validation (greedy answers to 20 MBPP-test problems, then their tests). It runs in-process with timers
wrapped around each phase's entry point; a timer's time excludes the timers nested in it, so the phases add up
to the wall time of the fit and ``other`` is the rest (CLI parsing, model and data loading, metrics, checkpoint).

Entry points, found by reading both versions of the code (the same names exist before and after the engine):

* generation: ``egcfg_pl.sampling.beam.HFSampler.sample`` inside the refresh callback's ``on_train_epoch_start``;
* held-out evaluation generation: the same ``HFSampler.sample`` inside Lightning's ``_EvaluationLoop.run``;
* re-score: ``egcfg_pl.sampling.beam.sequence_logprobs`` (the teacher-forced pass; refresh and held-out);
* sandbox: ``egcfg_pl.sandbox.executor.Executor.run_many`` (refresh candidates and held-out answers);
* training: Lightning's ``_TrainingEpochLoop.advance`` (batch fetch from the replay buffer, ``training_step``,
  backward, optimizer step).

Two modes. One checkout (run with that checkout on ``PYTHONPATH`` so its ``egcfg_pl`` is imported)::

    cd /tmp/before && PYTHONPATH=$PWD python /path/to/benchmarks/iteration_profile.py --child out.json

The comparison (each checkout in a fresh process, back to back, ``os.getloadavg()`` around each)::

    python -m benchmarks.iteration_profile --before /tmp/before --after . [--pairs 2]
    python -m benchmarks.iteration_profile --before-rev 74347da^ [--pairs 2]   # exports that commit itself

The older configs name their data as ``../shared/data/...`` relative to the checkout, so ``--before-rev``
exports next to a ``shared/data`` link to ``--data-dir``.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

PHASES = ("generation", "rescore", "sandbox", "training", "eval_generation", "other")
CONFIG = "configs/demo_cpu.yaml"
THREADS = 2


class PhaseClock:
    """Exclusive time per (phase, context): the innermost running timer owns the clock."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.stack: list[list] = []  # [name, started, child_seconds]
        self.notes: dict[str, list] = defaultdict(list)

    def context(self) -> str:
        """``eval`` inside the held-out evaluation, ``refresh`` inside the refresh, else ``fit``."""
        names = [frame[0] for frame in self.stack]
        return "eval" if "eval_loop" in names else "refresh" if "refresh" in names else "fit"

    def wrap(self, owner, attr: str, name: str, by_context: bool = False, after=None) -> None:
        original = getattr(owner, attr)
        clock = self

        @functools.wraps(original)
        def timed(*args, **kwargs):
            key = f"{name}:{clock.context()}" if by_context else name
            clock.stack.append([key, time.perf_counter(), 0.0])
            try:
                result = original(*args, **kwargs)
            finally:
                key, started, nested = clock.stack.pop()
                total = time.perf_counter() - started
                clock.seconds[key] += total - nested
                clock.calls[key] += 1
                if clock.stack:
                    clock.stack[-1][2] += total
            if after is not None:
                after(clock, key, args, result)
            return result

        setattr(owner, attr, timed)


def record_sample(clock: PhaseClock, key: str, args, result) -> None:
    """Problems, candidates and generated tokens of each ``sample`` call (same problems before and after)."""
    sampler, problems = args[0], args[1]
    stats = getattr(sampler, "last_stats", None)
    clock.notes[key].append({
        "problems": [p.id for p in problems],
        "candidates": len(result),
        "generated_tokens": getattr(stats, "generated_tokens", None),
        "settings": repr(sampler.settings),
    })


def install(clock: PhaseClock) -> None:
    """Timers around the entry points named in the module docstring."""
    from lightning.pytorch.loops.evaluation_loop import _EvaluationLoop
    from lightning.pytorch.loops.training_epoch_loop import _TrainingEpochLoop

    from egcfg_pl.lightning.module import BTPModule
    from egcfg_pl.lightning.refresh import ReplayRefresh
    from egcfg_pl.sampling import beam
    from egcfg_pl.sandbox.executor import Executor

    clock.wrap(beam.HFSampler, "sample", "sample", by_context=True, after=record_sample)
    clock.wrap(beam, "sequence_logprobs", "rescore", by_context=True)
    clock.wrap(Executor, "run_many", "sandbox", by_context=True)
    clock.wrap(_TrainingEpochLoop, "advance", "training")
    clock.wrap(_EvaluationLoop, "run", "eval_loop")
    clock.wrap(ReplayRefresh, "on_train_epoch_start", "refresh")
    clock.wrap(BTPModule, "configure_model", "model_load")


def phases(clock: PhaseClock, wall: float) -> dict[str, float]:
    """The timers folded into the report's phases; ``other`` is the wall time no phase timer claimed."""
    s = clock.seconds
    out = {
        "generation": s["sample:refresh"] + s["sample:fit"],
        "rescore": sum(v for k, v in s.items() if k.startswith("rescore:")),
        "sandbox": sum(v for k, v in s.items() if k.startswith("sandbox:")),
        "training": s["training"],
        "eval_generation": s["sample:eval"],
    }
    out["other"] = wall - sum(out.values())
    return out


def child(out_path: Path, config: str, overrides: list[str]) -> None:
    """One fit of ``config`` in this process (cwd = the checkout), timed by phase; the record goes to ``out_path``."""
    os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import egcfg_pl  # first: the newer code sets OpenMP's wait policy at import, before torch starts OpenMP

    checkout = Path.cwd().resolve()
    if not Path(egcfg_pl.__file__).resolve().is_relative_to(checkout):
        raise SystemExit(f"egcfg_pl comes from {egcfg_pl.__file__}, not {checkout}: put the checkout on PYTHONPATH")
    import torch

    torch.set_num_threads(THREADS)
    from egcfg_pl.lightning.cli import run_lightning_cli

    clock = PhaseClock()
    install(clock)
    root = tempfile.mkdtemp(prefix="iteration_profile_")
    args = ["fit", "--config", config, "--trainer.default_root_dir", root, "--trainer.enable_progress_bar", "false",
            *overrides]
    load_before = os.getloadavg()
    start = time.perf_counter()
    try:
        run_lightning_cli(args)
    finally:
        wall = time.perf_counter() - start
        shutil.rmtree(root, ignore_errors=True)
    split = phases(clock, wall)
    record = {
        "egcfg_pl_file": egcfg_pl.__file__,
        "checkout": str(checkout),
        "command": f"cd {checkout} && PYTHONPATH={checkout} python {' '.join(sys.argv)}",
        "fit_args": [a if a != root else "<temporary folder>" for a in args],
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "wall_seconds": wall,
        "phases": {k: {"seconds": v, "share": v / wall} for k, v in split.items()},
        "timers": {k: {"seconds": v, "calls": clock.calls[k]} for k, v in sorted(clock.seconds.items())},
        "samples": dict(clock.notes),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    out_path.write_text(json.dumps(record, indent=1))
    print(table({checkout.name: record}))


def commit_of(checkout: Path, fallback: str | None) -> str | None:
    """The checkout's HEAD, or ``fallback`` for an exported tree (``git archive`` has no .git)."""
    done = subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], capture_output=True, text=True)
    in_repo = done.returncode == 0 and (checkout / ".git").exists()
    return done.stdout.strip() if in_repo else fallback


def export(rev: str, data_dir: str) -> tuple[Path, str]:
    """``git archive rev`` into a temporary folder beside ``shared/data`` -> ``data_dir``; (checkout, commit)."""
    commit = subprocess.run(["git", "rev-parse", rev], capture_output=True, text=True, check=True).stdout.strip()
    root = Path(tempfile.mkdtemp(prefix="iteration_profile_export_"))
    (root / "shared").mkdir()
    (root / "shared" / "data").symlink_to(Path(data_dir).resolve())
    checkout = root / "before"
    checkout.mkdir()
    archive = subprocess.run(["git", "archive", commit], capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive, check=True)
    return checkout, commit


def run_one(label: str, checkout: Path, commit: str | None, data_dir: str) -> dict:
    out = Path(tempfile.mkstemp(prefix=f"iteration_profile_{label}_", suffix=".json")[1])
    env = {**os.environ, "PYTHONPATH": str(checkout), "EGCFG_DATA_DIR": data_dir, "OMP_NUM_THREADS": str(THREADS)}
    env.pop("OMP_WAIT_POLICY", None)  # each version's own default
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(out)]
    print(f"== {label}: {checkout} (load {os.getloadavg()})", flush=True)
    subprocess.run(command, cwd=checkout, env=env, check=True)
    record = json.loads(out.read_text())
    out.unlink()
    return {"label": label, "commit": commit, **record}


def table(records: dict[str, dict]) -> str:
    names = list(records)
    rows = [f"{'phase':<18}" + "".join(f"{n:>22}" for n in names)]
    for phase in (*PHASES, "total"):
        cells = []
        for n in names:
            r = records[n]
            s = r["wall_seconds"] if phase == "total" else r["phases"][phase]["seconds"]
            cells.append(f"{s:9.1f} s {s / r['wall_seconds']:6.1%}    ")
        rows.append(f"{phase:<18}" + "".join(f"{c:>22}" for c in cells))
    loads = [records[n]["timers"].get("model_load", {}).get("seconds", 0.0) for n in names]
    rows.append(f"{'(other: model load)':<18}" + "".join(f"{s:9.1f} s{'':>12}" for s in loads))
    return "\n".join(rows)


def compare(before: Path, after: Path, before_commit: str | None, pairs: int, out: Path, data_dir: str) -> None:
    """``pairs`` back-to-back runs, before then after, the second pair in reverse order."""
    commits = {"before": commit_of(before, before_commit), "after": commit_of(after, None)}
    checkouts = {"before": before, "after": after}
    runs = []
    for pair in range(pairs):
        order = ("before", "after") if pair % 2 == 0 else ("after", "before")
        for label in order:
            runs.append({"pair": pair, **run_one(label, checkouts[label], commits[label], data_dir)})
            print(table({f"{r['label']} #{r['pair']}": r for r in runs}), flush=True)
    result = {
        "what": "one demo-sized BTP iteration (cli.py fit --config configs/demo_cpu.yaml, max_epochs 1), by phase",
        "command": " ".join(["python -m benchmarks.iteration_profile", *sys.argv[1:]]),
        "config": CONFIG,
        "threads": THREADS,
        "cpu_count": os.cpu_count(),
        "phases": list(PHASES),
        "commits": commits,
        "runs": runs,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", type=Path, help="profile the checkout in the cwd; write its record here")
    parser.add_argument("--config", default=CONFIG)
    parser.add_argument("--override", action="append", default=[], help="extra fit argument (child; smoke tests)")
    parser.add_argument("--before", type=Path, help="checkout of the code before the engine (e.g. a git archive)")
    parser.add_argument("--before-rev", help="export this commit of the current repository as --before")
    parser.add_argument("--before-commit", help="the commit --before was exported from (an archive has no .git)")
    parser.add_argument("--after", type=Path, default=Path("."))
    parser.add_argument("--pairs", type=int, default=1, help="before/after pairs; odd pairs run after first")
    parser.add_argument("--data-dir", default=os.environ.get("EGCFG_DATA_DIR", str(Path("../shared/data").resolve())))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/iteration_profile.json"))
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.config, args.override)
    elif args.before is None and args.before_rev is None:
        parser.error("--before CHECKOUT or --before-rev REV is required (or --child OUT: the checkout in the cwd)")
    else:
        comparison(args)


def comparison(args: argparse.Namespace) -> None:
    """``compare`` of ``--before`` (or the exported ``--before-rev``, removed afterwards) and ``--after``."""
    before, commit = export(args.before_rev, args.data_dir) if args.before_rev else (args.before, args.before_commit)
    try:
        compare(before.resolve(), args.after.resolve(), commit, args.pairs, args.out, args.data_dir)
    finally:
        if args.before_rev:
            shutil.rmtree(before.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
