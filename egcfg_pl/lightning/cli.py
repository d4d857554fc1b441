"""LightningCLI wiring: ``BTPModule`` + ``BTPDataModule`` + the ``refresh:`` section (``ReplayRefresh``) from YAML,
dataclass docstrings as help.

The refresh is its own section, not an entry of ``trainer.callbacks``, so every setting of it can be overridden
on the command line (``--refresh.problems_per_refresh 2``); Lightning adds the built callback to the Trainer.

Parse errors are raised (``exit_on_error=False``) as :class:`~egcfg_pl.user_errors.UsageError` with one line
("unknown option data.replay.p2value_alfa; did you mean data.replay.p2value_alpha?") instead of a usage dump,
and ``--print_config`` first builds the settings, so it never prints a value the run would refuse.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
from pathlib import Path
from typing import Any

import yaml
from jsonargparse import set_parsing_settings
from lightning.pytorch.cli import LightningCLI

from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.module import BTPModule
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.lightning.run_folder import apply_to_cli_config
from egcfg_pl.sandbox import SandboxConfig
from egcfg_pl.user_errors import UsageError, explain_parse_error

PRINT_CONFIG = "--print_config"


class BTPCLI(LightningCLI):
    def add_arguments_to_parser(self, parser: Any) -> None:
        parser.add_argument("--log_level", default="INFO", help="Python logging level (DEBUG also shows tracebacks)")
        parser.add_lightning_class_args(ReplayRefresh, "refresh")
        parser.link_arguments("data.replay", "model.scoring")  # held-out P2Value is scored as the buffer scores
        parser.add_argument("--sandbox", type=SandboxConfig, default=SandboxConfig(),
                            help="executor of every test run: the refresh's candidates and the held-out answers")
        parser.link_arguments("sandbox", "model.sandbox")  # one setting, two users: they cannot drift apart
        parser.link_arguments("sandbox", "refresh.sandbox")

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        configure_logging(config.log_level)
        refuse_refresh_in_callbacks(config)
        apply_to_cli_config(config)  # logger and checkpoints in trainer.default_root_dir (run_folder.py)

    def parse_arguments(self, parser: Any, args: Any) -> None:
        """Parse; with ``--print_config``, validate by building the settings first (cheap: no model is loaded).

        Unlike Lightning's own, this emits no "args ... not recommended" warning: ``cli.py`` passes ``sys.argv``."""
        refuse_linked_keys(args)
        if isinstance(args, list) and any(a == PRINT_CONFIG or a.startswith(PRINT_CONFIG + "=") for a in args):
            plain = [a for a in args if not (a == PRINT_CONFIG or a.startswith(PRINT_CONFIG + "="))]
            _instantiate(parser, _parse(parser, plain))  # raises the settings' own ValueError
        self.config = _parse(parser, args)


def refuse_refresh_in_callbacks(config: Any) -> None:
    """A YAML written before the ``refresh:`` section would run two refreshes per epoch: say how to move it."""
    trainer = config.get("trainer") if hasattr(config, "get") else None
    for callback in (trainer.get("callbacks") if trainer is not None else None) or []:
        class_path = str(callback.get("class_path") if hasattr(callback, "get") else type(callback).__qualname__)
        if class_path.rsplit(".", 1)[-1] == ReplayRefresh.__name__:
            raise UsageError("trainer.callbacks: ReplayRefresh is now the top-level `refresh:` section; move its "
                             "init_args there (refresh: {problems_per_refresh: ..., generation: ...})")


LINKED = {"model.sandbox": "sandbox", "refresh.sandbox": "sandbox", "model.scoring": "data.replay"}
"""Keys the parser fills from another one (``link_arguments``); jsonargparse would let the source overwrite a
value a YAML gives them without a word."""


def refuse_linked_keys(args: Any) -> None:
    """A config (a mapping, or the ``--config`` files of a command line) that sets a linked key is refused, naming
    the one setting to use instead (YAMLs from before ``sandbox:`` set ``model.sandbox`` / ``refresh.sandbox``)."""
    if isinstance(args, dict):
        configs = [("the config", args)]
    else:
        args = list(args or [])
        paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
        paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        configs = [(path, yaml.safe_load(Path(path).read_text(encoding="utf-8"))) for path in paths if _is_file(path)]
    for where, config in configs:
        for key, source in LINKED.items():
            node: Any = config
            for part in key.split("."):
                node = node.get(part) if isinstance(node, dict) else None
            if node is not None:
                raise UsageError(f"{where}: {key} is set from {source} (one setting for every user of it); "
                                 f"move the value to {source}")


def _is_file(path: str) -> bool:
    try:
        return Path(path).is_file()
    except OSError:  # --config may also be the YAML text itself (jsonargparse accepts that)
        return False


def _instantiate(parser: Any, config: Any) -> Any:
    return (getattr(parser, "instantiate", None) or parser.instantiate_classes)(config)  # jsonargparse < 4.49


def _parse(parser: Any, args: Any) -> Any:
    try:
        return parser.parse_object(args) if isinstance(args, dict) else parser.parse_args(args)
    except argparse.ArgumentError as error:
        raise UsageError(explain_parse_error(str(error), _option_strings(parser))) from error


def _option_strings(parser: Any) -> list[str]:
    """Every option of the parser and its sub-command parsers (for "did you mean")."""
    found, stack = [], [parser]
    while stack:
        current = stack.pop()
        for action in current._actions:
            found += action.option_strings
            stack += list(getattr(action, "_name_parser_map", {}).values())
    return found


class ParseOnlyCLI(BTPCLI):
    def instantiate_classes(self) -> None:
        """Build nothing here: ``check_config`` builds the settings and objects but no Trainer."""


def check_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Parse a fit config and build its module, datamodule and refresh (cheap: no model is loaded, no Trainer is
    made), so every setting's own check runs; an error names ``where`` and the setting. Returns the complete
    config (every default written out, as ``--print_config`` shows it): two configs that differ only in
    spelling out a default resolve to the same one."""
    try:
        cli = run_lightning_cli(config, run=False, cls=ParseOnlyCLI)
        _instantiate(cli.parser, cli.config)
    except ValueError as error:  # UsageError too
        first = re.search(r"Errors:\n\s*- (.+)", str(error))  # a union's failed member: the setting's own message
        raise UsageError(f"{where}: {first.group(1) if first else error}") from error
    return yaml.safe_load(cli.parser.dump(cli.config, skip_none=False, skip_check=True))


def run_lightning_cli(
    args: list[str] | dict[str, Any] | None = None, run: bool = True, cls: type[BTPCLI] = BTPCLI, **kwargs: Any
) -> BTPCLI:
    """``cli.py fit|test|...`` (``run``), or the objects of one config without running (``run=False``: the demo,
    the campaign's variants; ``args`` a command line or the config as a mapping; ``kwargs`` go to LightningCLI)."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    no_exit = {"default_env": False, "exit_on_error": False}
    cli = cls(
        BTPModule,
        BTPDataModule,
        args=args,
        run=run,
        save_config_kwargs={"overwrite": True},
        parser_kwargs={**no_exit, **{name: dict(no_exit) for name in LightningCLI.subcommands()}},
        auto_configure_optimizers=False,
        **kwargs,
    )
    return cli


def configure_logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format="%(levelname)s %(name)s: %(message)s")
