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


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("demo", "evaluate", "experiment"):
        from importlib import import_module

        target = {
            "demo": "egcfg_pl.experiments.demo",
            "evaluate": "egcfg_pl.evaluate",
            "experiment": "egcfg_pl.experiments.runner",
        }[argv[0]]
        import_module(target).main(argv[1:])
        return
    from egcfg_pl.lightning.cli import run_lightning_cli

    run_lightning_cli(argv)


if __name__ == "__main__":
    main()
