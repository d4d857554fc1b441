"""LightningCLI wiring: ``BTPModule`` + ``BTPDataModule`` from YAML, dataclass docstrings as help."""

from __future__ import annotations

import logging
import os
from typing import Any

from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.lightning.run_folder import apply_to_cli_config


class BTPCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--log_level", default="INFO", help="Python logging level")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        configure_logging(config.log_level)
        apply_to_cli_config(config)  # logger and checkpoints in trainer.default_root_dir (run_folder.py)


def run_lightning_cli(args: list[str] | None = None, run: bool = True) -> BTPCLI:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    cli = BTPCLI(
        BTPModule,
        BTPDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"default_env": False},
        auto_configure_optimizers=False,
    )
    return cli


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
