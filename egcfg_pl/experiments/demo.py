"""`make demo`: baseline held-out evaluation, a short BTP fit, and the fine-tuned model on the same problems.

    python cli.py demo [--config configs/base_cpu.yaml --config configs/demo_cpu.yaml] [--humaneval 20]

Every result is read back from the evaluation JSON its stage wrote (``eval/<name>/`` for the baselines, the run
folder for the fine-tuned model), not from the module.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
import warnings
from pathlib import Path


from egcfg_pl.experiments.stats import summarize_eval
from egcfg_pl.lightning.cli import configure_logging, run_lightning_cli
from egcfg_pl.lightning.held_out import held_out_test
from egcfg_pl.lightning.run_folder import latest_eval_json
from egcfg_pl.metrics.rsr import relative_success_rate
from egcfg_pl.problems import ProblemSet

DEFAULT_CONFIGS = ["configs/base_cpu.yaml", "configs/demo_cpu.yaml"]


def with_summary(path: Path) -> dict:
    """An evaluation JSON's path and its means with 95% intervals."""
    return {"path": str(path), "summary": summarize_eval(path)}


def percent(value: float) -> str:
    return "  n/a" if value is None or math.isnan(value) else f"{value:5.1%}"


def with_interval(stat: dict) -> str:
    lo, hi = stat["ci95"]
    return f"{percent(stat['mean'])} [{percent(lo).strip()}, {percent(hi).strip()}]"


def results_table(summaries: dict[str, dict]) -> str:
    """Baseline vs fine-tuned rows: problems, pass@1 and the average test pass rate with 95% intervals
    (``experiments.stats.summarize_eval`` of each evaluation JSON)."""
    rows = [f"{'':<24}{'problems':>9}   {'pass@1 [95% CI]':<24}{'avg test pass rate [95% CI]'}"]
    for name, s in summaries.items():
        rows.append(f"{name:<24}{s['num_problems']:>9}   {with_interval(s['pass@1']):<24}{with_interval(s['avg_pass_rate'])}")
    return "\n".join(rows)


def buffer_words(stats: dict[str, float]) -> str:
    """The replay buffer after the fit, in words (the refresh callback's ``last_stats``)."""
    size = int(stats.get("buffer/size", 0))
    if not size:
        return "the replay buffer is empty (no candidate was sampled)"
    problems, solved = int(stats["buffer/problems"]), int(stats["buffer/problems_solved"])
    return (
        f"{size} tested programs from {problems} training problems; {solved} of those problems have a program "
        f"that passes every test. {stats['buffer/frac_all_passed']:.0%} of the programs pass all their tests, "
        f"{stats['buffer/frac_partial']:.0%} pass some; mean test pass rate {stats['buffer/mean_pass_rate']:.0%}, "
        f"mean P2Value {stats['buffer/mean_p2value']:.2f}."
    )


def rsr_line(tuned_rate: float, baseline_rate: float) -> str:
    """The RSR summary line; a zero baseline has no ratio (``relative_success_rate`` gives inf / nan)."""
    rsr = relative_success_rate(tuned_rate, baseline_rate)
    value = f"{rsr:.2f}" if math.isfinite(rsr) else "n/a (baseline solved none)"
    return f"RSR (fine-tuned vs baseline pass@1 on MBPP test): {value}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="cli.py demo", description=__doc__)
    parser.add_argument("--config", action="append", help=f"fit config(s), layered in order (default {DEFAULT_CONFIGS})")
    parser.add_argument("--humaneval", type=int, default=20, help="HumanEval problems in the baseline (0 = skip)")
    args = parser.parse_args(argv)
    for category in (FutureWarning, DeprecationWarning, UserWarning):  # library deprecation chatter
        warnings.filterwarnings("ignore", category=category)
    configure_logging("WARNING")
    logging.getLogger("egcfg_pl").setLevel(logging.INFO)
    start = time.perf_counter()

    cli = run_lightning_cli([a for path in args.config or DEFAULT_CONFIGS for a in ("--config", path)], run=False)
    module, data, trainer = cli.model, cli.datamodule, cli.trainer
    for problem_set in (data.train_set, data.held_out_set):  # no data: stop now, before minutes of baseline
        problem_set.load()
    root = Path(trainer.default_root_dir)
    baselines = {"MBPP test (baseline)": ("mbpp_baseline", data.held_out_set)}
    if args.humaneval:
        humaneval = ProblemSet(dataset="humaneval", split="test", limit=args.humaneval)
        baselines = {"HumanEval (baseline)": ("humaneval_baseline", humaneval), **baselines}
    config = cli.config["trainer"]
    results = {
        name: with_summary(held_out_test(module, problems, root / "eval" / folder, data.hparams.eval_batch_size,
                                         accelerator=config["accelerator"], precision=config["precision"]))
        for name, (folder, problems) in baselines.items()
    }
    fit_start = time.time()
    trainer.fit(module, data)  # refresh → replay → LoRA steps, then validation of the tuned target
    tuned = latest_eval_json(root, "val") if list(root.glob("eval_val_epoch*.json")) else None
    if tuned is None or tuned.stat().st_mtime < fit_start:  # none, or an earlier run's
        raise RuntimeError("the fit ran no held-out validation: keep trainer.check_val_every_n_epoch <= max_epochs")
    results["MBPP test (after BTP)"] = with_summary(tuned)
    refresh = next(cb for cb in trainer.callbacks if hasattr(cb, "last_stats"))
    print(summary(results, refresh.last_stats, trainer, module, time.perf_counter() - start))


def summary(results: dict[str, dict], buffer_stats: dict[str, float], trainer, module, seconds: float) -> str:
    """What the user reads at the end: the table, RSR, the buffer in words, and where everything was written."""
    base, tuned = results["MBPP test (baseline)"], results["MBPP test (after BTP)"]
    checkpoint = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
    return "\n".join([
        "",
        "=== egcfg_pl demo: SmolLM2-135M-Instruct on held-out problems, greedy decoding ===",
        results_table({name: r["summary"] for name, r in results.items()}),
        rsr_line(tuned["summary"]["pass@1"]["mean"], base["summary"]["pass@1"]["mean"]),
        "(95% intervals over problems: a few dozen problems cannot show small changes.)",
        "",
        "Replay buffer: " + buffer_words(buffer_stats),
        "",
        f"LoRA adapter:  {module.adapter_dir()}   (peft.PeftModel.from_pretrained(base_model, this_path))",
        f"checkpoint:    {checkpoint or '-'}   (resume: --ckpt_path last)",
        f"eval reports:  {Path(base['path']).parent}  and  {Path(tuned['path']).parent}",
        f"TensorBoard:   tensorboard --logdir {trainer.log_dir}",
        f"total time:    {seconds:.0f} s",
    ])
