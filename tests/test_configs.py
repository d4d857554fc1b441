"""Every YAML in configs/ parses against the code it configures (fields, types, class paths), and what it
says is what the objects it builds hold."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import yaml

from egcfg_pl.lightning.cli import BTPCLI, run_lightning_cli
from egcfg_pl.lightning.refresh import ReplayRefresh

ROOT = Path(__file__).resolve().parents[1]
# experiments_*.yaml configure the experiment runner, not LightningCLI (tests/test_experiments.py loads them)
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.yaml") if not p.name.startswith("experiments_"))
FIT_CONFIGS = [c for c in CONFIGS if not c.name.startswith("eval_")]
CPU_CONFIGS = [c for c in CONFIGS if "gpu" not in c.name and "ddp" not in c.name and "fsdp" not in c.name and "deepspeed" not in c.name]


def layers(config: Path) -> list[Path]:
    """The files a config runs with: a base alone, an eval config alone, any other on top of its base (CPU or GPU),
    as its usage line says (``--config configs/base_cpu.yaml --config configs/X.yaml``)."""
    if config.name.startswith(("base_", "eval_")):
        return [config]
    base = ROOT / "configs" / ("base_gpu.yaml" if "gpu" in config.name else "base_cpu.yaml")
    assert f"--config configs/{base.name} --config configs/{config.name}" in config.read_text(), \
        f"{config.name}: its usage line must name its base {base.name}"
    return [base, config]


def config_args(config: Path) -> list[str]:
    return [arg for path in layers(config) for arg in ("--config", str(path))]


def layered_yaml(config: Path) -> dict[str, Any]:
    """What the layered files say, merged as LightningCLI merges them (mappings key by key, values replace)."""
    from egcfg_pl.experiments.variant import fit_config

    return fit_config([str(p) for p in layers(config)])


class ParseOnlyCLI(BTPCLI):
    def instantiate_classes(self) -> None:  # validate the YAML, build nothing (GPU strategies need GPUs)
        pass


def test_deltas_repeat_no_value_of_their_base():
    """A config on top of a base holds only what it changes: no leaf equal to the base's."""
    from egcfg_pl.experiments.variant import fit_config

    def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(node, dict) or "class_path" in node:
            return {prefix: node}
        return {k: v for key, value in node.items() for k, v in leaves(value, f"{prefix}.{key}" if prefix else key).items()}

    for config in CONFIGS:
        files = layers(config)
        if len(files) == 2:
            base, delta = (leaves(fit_config([str(p)])) for p in files)
            repeated = {k: v for k, v in delta.items() if k in base and base[k] == v}
            assert not repeated, f"{config.name} repeats {base_name(files)}: {repeated}"


def base_name(files: list[Path]) -> str:
    return files[0].name


def assert_holds(obj: Any, expected: Any, where: str) -> None:
    """``obj`` (a built object, dataclass, list or value) carries every value ``expected`` (the YAML) names."""
    if isinstance(expected, dict):
        assert obj is not None, f"{where}: the YAML sets {expected} but the object is None"
        for key, value in expected.items():
            inner = obj[key] if isinstance(obj, dict) else getattr(obj, key)
            assert_holds(inner, value, f"{where}.{key}")
    elif isinstance(expected, list):
        numbers = all(isinstance(v, float | int) for v in expected)
        assert list(obj) == (pytest.approx(expected) if numbers else expected), f"{where}: {obj!r} != {expected!r}"
    elif isinstance(expected, float):
        assert obj == pytest.approx(expected), f"{where}: {obj!r} != {expected!r}"
    else:
        assert obj == expected, f"{where}: {obj!r} != {expected!r}"


def module_parts(module) -> dict[str, Any]:
    """Where the module keeps each ``model:`` section of the YAML."""
    return {"model": module.spec, "lora": module.lora, "evaluation": module.evaluation, "sandbox": module.sandbox,
            "pass_k": module.pass_k, "api": module.api, "template": module.template}


def data_parts(data) -> dict[str, Any]:
    return {"train": data.train_set, "held_out": data.held_out_set, "replay": data.buffer.settings}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_config_parses(config, monkeypatch):
    from egcfg_pl.lightning.datamodule import BTPDataModule
    from egcfg_pl.lightning.module import BTPModule
    from egcfg_pl.models import LoraSettings, ModelSpec
    from egcfg_pl.problems import ProblemSet
    from egcfg_pl.replay import ReplaySettings
    from egcfg_pl.sampling.settings import GenerationSettings
    from jsonargparse import set_parsing_settings

    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    cli = ParseOnlyCLI(BTPModule, BTPDataModule, args=config_args(config), run=False, auto_configure_optimizers=False)
    raw = layered_yaml(config)
    built = cli.parser.instantiate(cli.config)  # model, data and callbacks; the Trainer (GPU strategies) is not built
    module, data = built["model"], built["data"]
    assert isinstance(module, BTPModule) and isinstance(data, BTPDataModule)
    assert isinstance(module.spec, ModelSpec) and isinstance(module.evaluation, GenerationSettings)
    assert isinstance(data.held_out_set, ProblemSet) and isinstance(data.buffer.settings, ReplaySettings)
    assert module.scoring == data.buffer.settings
    assert module.sandbox == built["refresh"].sandbox  # linked: held-out P2Value is scored as the buffer scores
    mode = raw["model"].get("mode", "finetune")
    assert module.hparams.mode == mode
    lora = raw["model"].get("lora", {})
    if mode == "btp_only" or lora is None:  # nothing is trained (btp_only, or an evaluation config)
        assert module.lora is None
    else:
        assert isinstance(module.lora, LoraSettings)
    parts = module_parts(module)
    for key, value in raw["model"].items():
        where = f"{config.name}: model.{key}"
        if key == "lora" and mode == "btp_only":
            continue  # nothing is trained in btp_only: the module drops the adapter settings
        assert_holds(parts[key] if key in parts else module.hparams[key], value, where)
    parts = data_parts(data)
    for key, value in raw.get("data", {}).items():
        assert_holds(parts[key] if key in parts else data.hparams[key], value, f"{config.name}: data.{key}")
    if "sandbox" in raw:
        assert_holds(module.sandbox, raw["sandbox"], f"{config.name}: sandbox")
    if "refresh" in raw:
        assert isinstance(built["refresh"], ReplayRefresh)
        assert_holds(built["refresh"], raw["refresh"], f"{config.name}: refresh")
    for spec in raw.get("trainer", {}).get("callbacks") or []:
        assert not spec["class_path"].startswith("egcfg_pl."), f"{config.name}: our callbacks are sections (refresh:)"
    assert cli.config["seed_everything"] == raw.get("seed_everything", cli.config["seed_everything"])


@pytest.mark.parametrize("config", FIT_CONFIGS, ids=[c.name for c in FIT_CONFIGS])
def test_refresh_is_overridable_on_the_command_line(config):
    """``--refresh.X`` reaches the callback the Trainer runs (as an entry of ``trainer.callbacks`` it could not:
    ``--trainer.callbacks.init_args.X`` lands on the last callback)."""
    from egcfg_pl.lightning.datamodule import BTPDataModule
    from egcfg_pl.lightning.module import BTPModule

    args = [*config_args(config), "--refresh.problems_per_refresh", "2", "--sandbox.timeout", "1.5"]
    cli = ParseOnlyCLI(BTPModule, BTPDataModule, args=args, run=False, auto_configure_optimizers=False)
    refresh = cli.parser.instantiate(cli.config)["refresh"]
    assert isinstance(refresh, ReplayRefresh)
    assert refresh.problems_per_refresh == 2 and refresh.sandbox.timeout == 1.5  # one sandbox for both users
    assert cli.parser.instantiate(cli.config)["model"].sandbox == refresh.sandbox
    assert "refresh" in cli.parser.callback_keys  # so LightningCLI hands it to the Trainer


@pytest.mark.parametrize("config", CPU_CONFIGS, ids=[c.name for c in CPU_CONFIGS])
def test_cpu_config_instantiates(config, tmp_path, monkeypatch):
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    cli = run_lightning_cli([*config_args(config), f"--trainer.default_root_dir={tmp_path}"], run=False)
    assert cli.model.spec.name
    assert cli.datamodule.held_out_set.dataset
    assert sum(isinstance(cb, ReplayRefresh) for cb in cli.trainer.callbacks) == 1
