"""egcfg_pl command line.

    python cli.py fit --config configs/btp_smollm2_mbpp_cpu.yaml     # BTP training (LightningCLI)
    python cli.py test --config configs/eval_humaneval_smollm2.yaml  # held-out evaluation
    python cli.py fit --config X.yaml --print_config                 # the complete, reproducible config
    python cli.py demo                                               # the offline demo (make demo)
    python cli.py evaluate --dataset humaneval --samples s.jsonl     # score existing samples
    python cli.py experiment --config configs/experiments_cpu.yaml   # steps 1-4 + big-to-small + report
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; returns the process exit status (a sub-command's own int status, else 0)."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("demo", "evaluate", "experiment"):
        from importlib import import_module

        target = {
            "demo": "egcfg_pl.experiments.demo",
            "evaluate": "egcfg_pl.evaluate",
            "experiment": "egcfg_pl.experiments.runner",
        }[argv[0]]
        result = import_module(target).main(argv[1:])
        # evaluate returns its exit status; the experiment runner returns the report's Path (not a status)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    from egcfg_pl.lightning.cli import run_lightning_cli

    run_lightning_cli(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
