"""Every YAML in configs/ parses against the code it configures (fields, types, class paths)."""

from __future__ import annotations

from pathlib import Path

import pytest

from egcfg_pl.lightning.cli import BTPCLI, run_lightning_cli

# experiments_*.yaml configure the experiment runner, not LightningCLI (tests/test_experiments.py loads them)
CONFIGS = sorted(p for p in (Path(__file__).resolve().parents[1] / "configs").glob("*.yaml") if not p.name.startswith("experiments_"))
CPU_CONFIGS = [c for c in CONFIGS if "gpu" not in c.name and "ddp" not in c.name and "fsdp" not in c.name and "deepspeed" not in c.name]


class ParseOnlyCLI(BTPCLI):
    def instantiate_classes(self) -> None:  # validate the YAML, build nothing (GPU strategies need GPUs)
        pass


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, monkeypatch):
    from egcfg_pl.lightning.datamodule import BTPDataModule
    from egcfg_pl.lightning.module import BTPModule
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    cli = ParseOnlyCLI(BTPModule, BTPDataModule, args=["--config", str(config)], run=False, auto_configure_optimizers=False)
    assert cli.config["model"] is not None


@pytest.mark.parametrize("config", CPU_CONFIGS, ids=[c.name for c in CPU_CONFIGS])
def test_cpu_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cli = run_lightning_cli(["--config", str(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.spec.name
    assert cli.datamodule.held_out_set.dataset
