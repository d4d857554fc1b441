"""Run a campaign: the chosen steps, one JSON per step, then ``report.md`` with plots.

    python cli.py experiment --config configs/experiments_cpu.yaml [--steps '[step2_btp]'] [--force]
    python cli.py experiment --config configs/experiments_standard.yaml --until selection   # then commit chosen.yaml
    python cli.py experiment --config configs/experiments_standard.yaml                     # tests the chosen

Layout of ``<output_dir>/<name>/``:

- ``config.yaml``: the resolved spec (rerun it with ``--config``);
- ``<step>.json``: written atomically when the step ends; a rerun skips steps whose JSON exists;
- ``runs/<key>/``: one folder per distinct variant (the hash of its fit config): ``fit_config.yaml`` (rerun it
  alone with ``cli.py fit --config``), ``fit.json`` (the fit's record), ``record.json`` (fit + tests),
  ``eval/<held-out set>/`` evaluation JSON, the adapter (and ``adapter_epoch{N}/`` with a validation set),
  ``eval_val_epoch{N}.json``, ``experiences.jsonl``, ``checkpoints/``, TensorBoard logs. A variant shared by two
  steps (the ablation's ``power`` is step 2's run) runs once; an interrupted campaign reruns only unfinished
  ones, and an interrupted fit continues from its ``checkpoints/last.ckpt``;
- ``shared_samples/``: the iteration-0 samples every variant shares (``share_initial_samples``), kept across sessions;
- ``chosen.yaml`` and ``selection.md`` (with ``validation``): the iteration each trained variant tests, chosen on
  validation before any test set runs (``--until selection`` stops there);
- ``answers/<set>/<variant>.jsonl``: every held-out problem's greedy program and verdict;
- ``report.md`` and its PNGs.

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

from egcfg_pl.experiments.protocol import assemble_protocol
from egcfg_pl.experiments.report import write_report, write_selection_report
from egcfg_pl.experiments.spec import STEPS, ExperimentSpec
from egcfg_pl.experiments.steps import UNTRAINED, VARIANTS, Variant, assemble
from egcfg_pl.experiments.answers import write_answers
from egcfg_pl.experiments.selection import CHOSEN, RULE, adapter_of_epoch, read_chosen, write_chosen
from egcfg_pl.experiments.shared_samples import SampleStore
from egcfg_pl.experiments.variant import fit_config, fit_variant, test_variant
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
        self.samples = SampleStore(self.root / "shared_samples") if spec.share_initial_samples else None
        self.done: dict[str, dict[str, Any]] = {}  # variant key -> record, this session

    def spec_hash(self) -> str:
        """Identity of what the steps compute (everything but the step list and where results go)."""
        ignored = ("steps", "output_dir", "name", "threads", "until")
        spec = {k: v for k, v in jsonable(self.spec).items() if k not in ignored}
        spec["base_contents"] = [Path(f).read_text(encoding="utf-8") if Path(f).is_file() else None
                                 for f in self.spec.base]  # an edited base file is another spec
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def config(self, variant: Variant) -> dict[str, Any]:
        """The variant's fit config: the base files, the campaign's ``fit`` options, the variant's changes."""
        return fit_config(self.spec.base, self.spec.fit, variant.changes)

    def key(self, variant: Variant) -> str:
        """The variant's folder: a hash of its complete fit config (defaults written out) and how it runs."""
        resolved = check_config(self.config(variant), f"variant {variant.name}")
        identity = {"config": resolved, "train": variant.train,
                    "stop_if_empty": variant.stop_if_empty, "share_initial_samples": self.spec.share_initial_samples,
                    "held_out": jsonable(self.spec.held_out), "validation": jsonable(self.spec.validation)}
        return hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]

    def check(self) -> None:
        """Build every variant's settings before the first one runs: a bad value (a grid α outside [0, 1], an
        unknown strategy) fails now, with the fit option's name, not after hours of earlier variants."""
        variants = [UNTRAINED] + [v for step in self.spec.steps for v in VARIANTS[step](self.spec)]
        for variant in variants:
            check_config(self.config(variant), f"variant {variant.name}")

    def folder(self, variant: Variant) -> Path:
        return self.root / "runs" / self.key(variant)

    def fitted(self, variant: Variant) -> dict[str, Any]:
        """The variant's fit record (``fit.json``): from disk (unless ``force``), or by fitting it; a fit that was
        interrupted after an epoch checkpoint (``checkpoints/last.ckpt``) continues from there."""
        folder = self.folder(variant)
        path = folder / "fit.json"
        if path.is_file() and not self.force:
            return json.loads(path.read_text(encoding="utf-8"))
        resume = (folder / "checkpoints" / "last.ckpt").is_file() and not self.force
        config = self.config(variant)
        if resume:
            log.info("variant %s: continuing the interrupted fit in %s", variant.name, folder)
        else:
            log.info("variant %s: fitting in %s", variant.name, folder)
            shutil.rmtree(folder, ignore_errors=True)  # experiences.jsonl is appended to: start clean
            folder.mkdir(parents=True)
        validation = self.spec.validation
        tests = list(self.spec.held_out.values()) if validation is not None else None
        record = fit_variant(config, folder, self.samples, variant.stop_if_empty, validation, tests, resume)
        write_json(path, record)
        return record

    def select(self) -> Path:
        """Fit every trained variant of the chosen steps (validating each iteration) and write ``chosen.yaml``:
        per variant the iteration the pre-registered rule picks. Entries already in ``chosen.yaml`` (a committed
        selection) are kept as they are, unless ``force`` refitted them."""
        chosen = read_chosen(self.root)
        seen: set[str] = set()
        for step in self.spec.steps:
            for variant in VARIANTS[step](self.spec):
                key = self.key(variant)
                if not variant.train or key in seen:
                    continue
                seen.add(key)
                record = self.fitted(variant)
                pick = record.get("chosen")
                entry = {"key": key, "iteration": None if pick is None else pick["iteration"],
                         "validation": pick, "curve": record.get("validation"),
                         "adapter": None if pick is None else  # relative to the campaign folder: it moves with it
                         str(adapter_of_epoch(self.folder(variant), pick["iteration"]).relative_to(self.root))}
                if variant.name in chosen and chosen[variant.name].get("key") == key and not self.force:
                    if chosen[variant.name].get("iteration") != entry["iteration"]:
                        log.warning("variant %s: chosen.yaml keeps iteration %s (the fit now picks %s)", variant.name,
                                    chosen[variant.name].get("iteration"), entry["iteration"])
                    continue
                chosen[variant.name] = entry
        return write_chosen(self.root, chosen, RULE)

    def adapter(self, variant: Variant, record: dict[str, Any]) -> str | None:
        """The adapter the test sets evaluate: the chosen iteration's (``chosen.yaml``) with a validation set, else
        the final one."""
        if self.spec.validation is None:
            return record.get("adapter")
        key = self.key(variant)
        for name, entry in read_chosen(self.root).items():
            if entry.get("key") == key:
                return None if entry.get("adapter") is None else str(self.root / entry["adapter"])
        raise UsageError(f"variant {variant.name} ({key}) is not in {self.root / CHOSEN}; run the campaign with "
                         "--until selection first (or remove the file to select again)")

    def test_sets(self, variant: Variant) -> dict[str, Any]:
        sets = dict(self.spec.held_out)
        if not variant.train and self.spec.validation is not None and sets:
            sets["validation"] = self.spec.validation  # the learning curves' starting point
        return sets

    def variant(self, variant: Variant) -> dict[str, Any]:
        """The variant's record: from this session, from disk (unless ``force``), or by fitting and testing it."""
        key = self.key(variant)
        if key in self.done:
            return self.done[key]
        folder = self.folder(variant)
        path = folder / "record.json"
        record = json.loads(path.read_text(encoding="utf-8")) if path.is_file() and not self.force else None
        if record is not None and variant.train and record.get("evaluations") is not None \
                and record.get("tested_adapter") != self.adapter(variant, record):
            log.warning("variant %s: %s tested %s, but %s now names another adapter; testing again",
                        variant.name, path, record.get("tested_adapter"), CHOSEN)
            record = None
        if record is not None:
            log.info("variant %s: reusing %s", variant.name, path)
        else:
            record = {"key": key, "first_name": variant.name, "folder": str(folder), "trained": False,
                      "optimizer_steps": 0, "seconds": {}}
            if variant.train:
                record.update(self.fitted(variant))
            else:
                shutil.rmtree(folder, ignore_errors=True)
                folder.mkdir(parents=True)
                atomic_write_text(folder / "fit_config.yaml", yaml.safe_dump(self.config(variant), sort_keys=False))
            record["evaluations"] = record["held_out"] = None
            if not variant.train or record["trained"]:
                adapter = self.adapter(variant, record) if variant.train else None
                if variant.train and adapter is None:
                    record["trained"] = False  # no iteration was validated: the untrained weights stand
                else:
                    tested = test_variant(self.config(variant), folder, self.test_sets(variant), adapter, variant.train)
                    record["seconds"] = {**record["seconds"], **tested.pop("seconds")}
                    record.update(tested)
            write_json(path, record)
        evaluations = record["evaluations"]
        if evaluations is None and variant.train:  # no optimizer step: its answers are the untrained model's
            evaluations = {k: v for k, v in self.variant(UNTRAINED)["evaluations"].items() if k in self.spec.held_out}
        if evaluations:
            write_answers(self.root / "answers", variant.name, evaluations)
        self.done[key] = record
        return record

    def step(self, step: str) -> dict[str, Any]:
        path = self.root / f"{step}.json"
        if path.is_file() and not self.force:
            result = json.loads(path.read_text(encoding="utf-8"))
            if result.get("spec_hash") == self.spec_hash():
                log.info("step %s: done already (%s); --force redoes it", step, path)
                return result
            log.warning("step %s: %s was written by another (or an unrecorded) spec; assembling it again with this one "
                        "(variants are reused only where their fit config's key is unchanged)", step, path)
        start = time.perf_counter()
        result = (assemble_protocol(self.spec, self.variant) if step == "protocol"
                  else assemble(step, self.spec, self.variant))
        result["seconds"] = time.perf_counter() - start
        result["base"] = {"files": self.spec.base, "fit": self.spec.fit}
        result["spec_hash"] = self.spec_hash()
        write_json(path, result)
        log.info("step %s: written %s (%.0f s)", step, path, result["seconds"])
        return result

    def run(self) -> Path:
        """The chosen steps, then the report over every finished step of this campaign folder."""
        self.check()
        if self.spec.validation is not None:
            chosen = self.select()
            if self.spec.until == "selection":
                log.info("selection written to %s; commit it, then rerun without --until to test", chosen)
                return write_selection_report(self.root, read_chosen(self.root))
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
        if self.spec.validation is not None:
            sets += f"; model selection on validation {problems(asdict(self.spec.validation))} (chosen.yaml)"
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
    caps = "".join(f", {source} {cap}" for source, cap in (g.get("max_new_tokens_by_source") or {}).items())
    return f"{g['strategy']} ({g['num_return_sequences']} per problem, max {g['max_new_tokens']} new tokens{caps})"


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
