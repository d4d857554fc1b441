"""`make demo`: baseline held-out evaluation, a short BTP fit, and the fine-tuned model on the same problems.

    python cli.py demo [--config configs/demo_cpu.yaml] [--humaneval 20]
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path

import lightning as L

from egcfg_pl.lightning.cli import configure_logging, run_lightning_cli
from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.metrics.rsr import relative_success_rate
from egcfg_pl.problems import ProblemSet


def evaluate(trainer_kwargs: dict, module, datamodule) -> dict:
    """``trainer.test`` on held-out problems; returns the module's last evaluation record."""
    L.Trainer(logger=False, enable_checkpointing=False, **trainer_kwargs).test(module, datamodule, verbose=False)
    return dict(module.last_eval)


def line(name: str, result: dict) -> str:
    return (
        f"{name:<34} pass@1 {result['pass@1']:6.1%}   avg test pass rate {result['avg_pass_rate']:6.1%}"
        f"   ({int(result['num_problems'])} problems)"
    )


def rsr_line(tuned_rate: float, baseline_rate: float) -> str:
    """The RSR summary line; a zero baseline has no ratio (``relative_success_rate`` gives inf / nan)."""
    rsr = relative_success_rate(tuned_rate, baseline_rate)
    value = f"{rsr:.2f}" if math.isfinite(rsr) else "n/a (baseline solved none)"
    return f"RSR (fine-tuned vs baseline pass@1 on MBPP test): {value}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cli.py demo", description=__doc__)
    parser.add_argument("--config", default="configs/demo_cpu.yaml")
    parser.add_argument("--humaneval", type=int, default=20, help="HumanEval problems in the baseline (0 = skip)")
    args = parser.parse_args(argv)
    for category in (FutureWarning, DeprecationWarning, UserWarning):  # library deprecation chatter
        warnings.filterwarnings("ignore", category=category)
    configure_logging("WARNING")
    logging.getLogger("egcfg_pl").setLevel(logging.INFO)
    start = time.perf_counter()

    cli = run_lightning_cli(["--config", args.config], run=False)
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    eval_kwargs = {"accelerator": trainer.accelerator.__class__.__name__.replace("Accelerator", "").lower(),
                   "devices": 1, "precision": trainer.precision, "enable_progress_bar": True}
    module.hparams.results_dir = str(Path(trainer.default_root_dir) / "baseline")
    results = {}
    if args.humaneval:
        humaneval = BTPDataModule(held_out=ProblemSet(dataset="humaneval", split="test", limit=args.humaneval))
        results["HumanEval (baseline)"] = evaluate(eval_kwargs, module, humaneval)
    results["MBPP test (baseline)"] = evaluate(eval_kwargs, module, data)
    module.hparams.results_dir = None

    trainer.fit(module, data)  # refresh → replay → LoRA steps, then validation of the tuned target
    if module.last_eval.get("stage") != "val":
        raise RuntimeError("the fit ran no held-out validation: keep trainer.check_val_every_n_epoch <= max_epochs")
    results["MBPP test (after BTP)"] = dict(module.last_eval)

    print("\n=== egcfg_pl demo: SmolLM2-135M-Instruct, held-out problems, greedy ===")
    for name, result in results.items():
        print(line(name, result))
    base, tuned = results["MBPP test (baseline)"], results["MBPP test (after BTP)"]
    print(rsr_line(tuned["pass@1"], base["pass@1"]))
    refresh = next(cb for cb in trainer.callbacks if hasattr(cb, "last_stats"))
    print(f"replay buffer: {refresh.last_stats}")
    print(f"TensorBoard logs: {trainer.log_dir}   (tensorboard --logdir {trainer.log_dir})")
    print(f"checkpoint:       {trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else '-'}")
    print(f"LoRA adapter:     {module.adapter_dir()}   (PeftModel.from_pretrained(base, path))")
    print(f"results JSON:     {Path(tuned['path']).parent}")
    print(f"total time: {time.perf_counter() - start:.0f} s")
