"""Run a campaign: the chosen steps, one JSON per step, then ``report.md`` with plots.

    python cli.py experiment --config configs/experiments_cpu.yaml [--steps '[step2_btp]'] [--force]

Layout of ``<output_dir>/<name>/``:

- ``config.yaml``: the resolved spec (rerun it with ``--config``);
- ``<step>.json``: written atomically when the step ends; a rerun skips steps whose JSON exists;
- ``runs/<key>/``: one folder per distinct variant (the hash of its fit config): ``fit_config.yaml`` (rerun it
  alone with ``cli.py fit --config``), ``record.json``, ``eval/<held-out set>/`` evaluation JSON, the adapter,
  ``experiences.jsonl``, TensorBoard logs. A variant shared by two steps (the ablation's ``power`` is step 2's
  run) runs once; an interrupted campaign reruns only unfinished ones;
- ``report.md`` and ``<step>_*.png``.

``--force`` redoes the chosen steps and their variants.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import re
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import yaml
from jsonargparse import ActionConfigFile, ArgumentParser, set_parsing_settings

from egcfg_pl.experiments.report import write_report
from egcfg_pl.experiments.spec import STEPS, ExperimentSpec
from egcfg_pl.experiments.steps import UNTRAINED, VARIANTS, Variant, assemble
from egcfg_pl.experiments.variant import fit_config, run_variant
from egcfg_pl.lightning.cli import check_config, configure_logging
from egcfg_pl.user_errors import UsageError, explain_parse_error
from egcfg_pl.crash_safe import atomic_write_text

log = logging.getLogger(__name__)


def jsonable(value: Any) -> Any:
    """Dataclasses to dicts, tuples to lists, non-finite floats to null (JSON has no NaN)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return jsonable(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(jsonable(data), indent=2, allow_nan=False) + "\n")


class Campaign:
    """Runs variants once each (cached on disk by settings hash) and steps once each (skipped when done)."""

    def __init__(self, spec: ExperimentSpec, force: bool = False) -> None:
        self.spec, self.force = spec, force
        self.root = Path(spec.output_dir) / spec.name
        self.samples: dict | None = {} if spec.share_initial_samples else None
        self.done: dict[str, dict[str, Any]] = {}  # variant key -> record, this session

    def spec_hash(self) -> str:
        """Identity of what the steps compute (everything but the step list and where results go)."""
        ignored = ("steps", "output_dir", "name", "threads")
        spec = {k: v for k, v in jsonable(self.spec).items() if k not in ignored}
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def config(self, variant: Variant) -> dict[str, Any]:
        """The variant's fit config: the base files, the campaign's ``fit`` options, the variant's changes."""
        return fit_config(self.spec.base, self.spec.fit, variant.changes)

    def key(self, variant: Variant) -> str:
        """The variant's folder: a hash of its complete fit config (defaults written out) and how it runs."""
        resolved = check_config(self.config(variant), f"variant {variant.name}")
        identity = {"config": resolved, "train": variant.train,
                    "stop_if_empty": variant.stop_if_empty, "share_initial_samples": self.spec.share_initial_samples,
                    "held_out": jsonable(self.spec.held_out)}
        return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]

    def check(self) -> None:
        """Build every variant's settings before the first one runs: a bad value (a grid α outside [0, 1], an
        unknown strategy) fails now, with the fit option's name, not after hours of earlier variants."""
        variants = [UNTRAINED] + [v for step in self.spec.steps for v in VARIANTS[step](self.spec)]
        for variant in variants:
            check_config(self.config(variant), f"variant {variant.name}")

    def variant(self, variant: Variant) -> dict[str, Any]:
        """The variant's record: from this session, from disk (unless ``force``), or by running it."""
        key = self.key(variant)
        if key in self.done:
            return self.done[key]
        folder = self.root / "runs" / key
        path = folder / "record.json"
        if path.is_file() and not self.force:
            log.info("variant %s: reusing %s", variant.name, path)
            record = json.loads(path.read_text(encoding="utf-8"))
        else:
            log.info("variant %s: running in %s", variant.name, folder)
            shutil.rmtree(folder, ignore_errors=True)  # experiences.jsonl is appended to: start clean
            config = self.config(variant)
            folder.mkdir(parents=True)
            atomic_write_text(folder / "fit_config.yaml", yaml.safe_dump(config, sort_keys=False))
            record = {"key": key, "first_name": variant.name, "folder": str(folder),
                      **run_variant(config, folder, self.spec.held_out, variant.train, self.samples,
                                    variant.stop_if_empty)}
            write_json(path, record)
        self.done[key] = record
        return record

    def step(self, step: str) -> dict[str, Any]:
        path = self.root / f"{step}.json"
        if path.is_file() and not self.force:
            result = json.loads(path.read_text(encoding="utf-8"))
            if result.get("spec_hash") != self.spec_hash():
                log.warning("step %s: %s was written by another (or an unrecorded) spec; --force redoes it with this one", step, path)
            log.info("step %s: done already (%s); --force redoes it", step, path)
            return result
        start = time.perf_counter()
        result = assemble(step, self.spec, self.variant)
        result["seconds"] = time.perf_counter() - start
        result["base"] = {"files": self.spec.base, "fit": self.spec.fit}
        result["spec_hash"] = self.spec_hash()
        write_json(path, result)
        log.info("step %s: written %s (%.0f s)", step, path, result["seconds"])
        return result

    def run(self) -> Path:
        """The chosen steps, then the report over every finished step of this campaign folder."""
        self.check()
        results = {step: self.step(step) for step in self.spec.steps}
        for step in STEPS:
            path = self.root / f"{step}.json"
            if step not in results and path.is_file():
                results[step] = json.loads(path.read_text(encoding="utf-8"))
        return write_report(self.root, {s: results[s] for s in STEPS if s in results}, self.header())

    def header(self) -> list[str]:
        """The base the variants share, in the words of its complete fit config (``runs/<key>/fit_config.yaml``)."""
        c = check_config(self.config(Variant("btp")), "the base")
        model, data, refresh = c["model"], c["data"], c["refresh"]
        held_out = {name: asdict(p) for name, p in self.spec.held_out.items()} or {"held_out": data["held_out"]}
        sets = "; ".join(f"{name} {problems(p)}" for name, p in held_out.items())
        lora = model["lora"] or {}
        return [
            f"- fit config: {', '.join(self.spec.base) or '(embedded)'}"
            + (f", with the campaign's fit options {list(self.spec.fit)}" if self.spec.fit else ""),
            f"- target model: `{model['model']['name']}`, precision {c['trainer']['precision']}, "
            f"LoRA r={lora.get('r')}, learning rate {model['learning_rate']}",
            f"- training problems: {problems(data['train'])}; held out: {sets}",
            f"- refresh sampling: {generation(refresh['generation'])}, problems per refresh "
            f"{refresh['problems_per_refresh'] or 'all'}; held-out: {generation(model['evaluation'])}",
            f"- {c['trainer']['max_epochs']} BTP iteration(s), {data['samples_per_epoch']} replay draws each "
            f"(batch {data['batch_size']}), seed {c['seed_everything']}",
        ]


def problems(p: dict[str, Any]) -> str:
    return f"{p['dataset']}/{p['split']} offset {p['offset']} limit {p['limit']}"


def generation(g: dict[str, Any]) -> str:
    return f"{g['strategy']} ({g['num_return_sequences']} per problem, max {g['max_new_tokens']} new tokens)"


def build_parser() -> ArgumentParser:
    set_parsing_settings(docstring_parse_attribute_docstrings=True)
    parser = ArgumentParser(prog="cli.py experiment", description=__doc__, default_env=False, exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML with the ExperimentSpec fields")
    parser.add_class_arguments(ExperimentSpec)
    parser.add_argument("--force", action="store_true", help="redo the chosen steps even if their JSON exists")
    parser.add_argument("--log_level", default="INFO", help="Python logging level")
    return parser


def parse_spec(argv: list[str] | None = None) -> tuple[ExperimentSpec, Any, ArgumentParser]:
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except argparse.ArgumentError as error:
        if re.search(r"'run\.", str(error)):  # a campaign file from before the one schema
            raise UsageError("the campaign's run: section is gone: a variant is a fit config now; name the base fit "
                             "config (base: [configs/base_cpu.yaml]) and put changed options under fit: (nested or "
                             "dotted, e.g. data.train.limit: 16), as configs/experiments_cpu.yaml does") from error
        raise UsageError(explain_parse_error(str(error))) from error
    init = parser.instantiate(cfg)
    fields = {f.name: getattr(init, f.name) for f in dataclasses.fields(ExperimentSpec)}
    return ExperimentSpec(**fields), cfg, parser


def main(argv: list[str] | None = None) -> Path:
    spec, cfg, parser = parse_spec(argv)
    configure_logging(cfg.log_level)
    if spec.threads is not None:
        torch.set_num_threads(spec.threads)
    campaign = Campaign(spec, force=cfg.force)
    campaign.root.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(parser.dump(cfg))
    for key in ("config", "force", "log_level"):
        config.pop(key, None)
    atomic_write_text(campaign.root / "config.yaml", yaml.safe_dump(config, sort_keys=False))
    report = campaign.run()
    print(f"report: {report}")
    return report


if __name__ == "__main__":
    main()
