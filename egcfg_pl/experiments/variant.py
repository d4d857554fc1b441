"""One variant of a campaign, the single code path of every step: a fit config, fit, test on each held-out set.

A variant *is* a LightningCLI fit config (``fit_config``: the campaign's base files layered, then dotted changes),
built by the same parser and classes as ``python cli.py fit --config ...``, so any fit option can vary.
Two phases, so a selection can be committed between them: ``fit_variant(config, folder, ...)`` fits (validating
each iteration when the campaign has a validation set) and returns the fit record (replay buffer statistics and
P2Value histogram, solved training problems per iteration, validation curve, chosen iteration, adapter, timings);
``test_variant`` evaluates one adapter (or the untrained model: the RSR baseline, a big-to-small source) on every
held-out set and returns the evaluation JSON paths and metrics (per-problem results, from which the steps compute
intervals).
"""

from __future__ import annotations

import copy
import gc
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from peft import load_peft_weights, set_peft_model_state_dict

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.experiments.selection import EpochAdapters, choose, curve
from egcfg_pl.lightning.cli import run_lightning_cli
from egcfg_pl.lightning.datamodule import BTPDataModule
from egcfg_pl.lightning.held_out import held_out_test
from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.lightning.refresh_core import add_to_metric, score
from egcfg_pl.metrics.p2value import P2ValueMetric
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.problems import ProblemSet
from egcfg_pl.problems.overlap import check_overlap
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.experience import Experience

log = logging.getLogger(__name__)


def set_dotted(config: dict[str, Any], path: str, value: Any) -> None:
    """``config["a"]["b"] = value`` for ``path`` ``a.b``, creating the mappings on the way."""
    *parents, leaf = path.split(".")
    node = config
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = copy.deepcopy(value)


def layer(config: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``config`` with ``changes`` on top: nested mappings merge key by key (as ``--config a --config b`` does),
    dotted keys (``data.replay.strategy``) name one leaf, anything else (lists, scalars) replaces."""
    out = copy.deepcopy(config)
    for key, value in changes.items():
        if "." in key:
            set_dotted(out, key, value)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and "class_path" not in value:
            out[key] = layer(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def fit_config(files: list[str], *changes: dict[str, Any]) -> dict[str, Any]:
    """The fit config the files give, layered in order, with each mapping of ``changes`` on top."""
    config: dict[str, Any] = {}
    for path in files:
        loaded = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"base {path}: a fit config is a YAML mapping (trainer:, model:, data:, refresh:)")
        config = layer(config, loaded)
    for change in changes:
        config = layer(config, change)
    return config


class EmptyReplayError(RuntimeError):
    """The first refresh stored nothing (e.g. sample-and-filter where no sampled program passed)."""


class StopOnEmptyBuffer(L.Callback):
    """Ends the fit before any optimizer step when the refresh left nothing drawable (listed after the
    refresh callback, so it sees the filled buffer). Lightning tears down and re-raises the error."""

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        buffer = trainer.datamodule.buffer
        if buffer.drawable() == 0:  # empty, or every kept program is excluded (e.g. all truncated under skip)
            raise EmptyReplayError(
                f"iteration {trainer.current_epoch}: no sampled program can be trained on ({len(buffer)} kept, "
                f"replay.min_pass_rate={buffer.settings.min_pass_rate}, replay.truncated={buffer.settings.truncated})"
                "; nothing to fine-tune on"
            )


class SharedSampleRefresh(ReplayRefresh):
    """``ReplayRefresh`` that samples and tests a shard once per campaign while the sampling weights are
    provably those every variant starts from: a frozen source model (any iteration), or the target before
    its first optimizer step (a fresh LoRA adapter has B = 0, so it adds exactly nothing).

    The candidates and verdicts are shared; each variant rebuilds its experiences with its own P2Value α
    and possibility form, so the variants differ only in what they keep and replay. Built from the refresh the
    fit config made (``refresh:``), so it runs with exactly those settings.
    """

    def __init__(self, refresh: ReplayRefresh, cache: dict[str, list[tuple[Any, Any]]]) -> None:
        vars(self).update(vars(refresh))
        self.cache = cache
        self.reused = 0  # refreshes served from the cache in this fit

    def _key(self, pl_module: Any, problems: list[Problem], epoch: int) -> str | None:
        if self.source_api is not None or (self.source_model is None and pl_module.global_step > 0):
            return None
        model = self.source_model or pl_module.spec
        precision = pl_module.trainer.precision
        parts = (model, self.generation, pl_module.template, self.sandbox, precision, epoch, [p.id for p in problems])
        return repr(parts)

    def refresh(self, pl_module: Any, problems: Any, replay: Any, epoch: int) -> list[Experience]:
        key = self._key(pl_module, list(problems), epoch)
        if key is None:
            return super().refresh(pl_module, problems, replay, epoch)
        if key in self.cache:
            self.reused += 1
        else:
            self.cache[key] = [(e.candidate, e.verdict) for e in super().refresh(pl_module, problems, replay, epoch)]
        candidates, verdicts = zip(*self.cache[key]) if self.cache[key] else ((), ())
        return score(candidates, verdicts, replay)


def fit(cli: Any, folder: Path, cache: Any | None, ckpt_path: str | None = None) -> dict[str, Any]:
    """BTP iterations (refresh → replay → LoRA steps) with the Trainer the fit config built; the adapter goes to
    ``folder/adapter`` (and each iteration's to ``folder/adapter_epoch{N}`` when ``EpochAdapters`` is a callback).
    ``ckpt_path`` ("last") continues an interrupted fit from its last epoch checkpoint."""
    trainer, module, data = cli.trainer, cli.model, cli.datamodule
    refresh = next(cb for cb in trainer.callbacks if isinstance(cb, ReplayRefresh))
    if cache is not None:
        refresh = SharedSampleRefresh(refresh, cache)
        trainer.callbacks[[type(cb) for cb in trainer.callbacks].index(ReplayRefresh)] = refresh
    note = None
    try:
        trainer.fit(module, data, ckpt_path=ckpt_path)
    except EmptyReplayError as error:
        note = str(error)
    return {
        "optimizer_steps": int(trainer.global_step),
        "iterations": int(trainer.max_epochs or 0),
        "note": note,
        "resumed_from": ckpt_path,
        "refresh": {k: v for k, v in refresh.last_stats.items() if k.startswith("refresh/")},
        "buffer": buffer_record(data),
        "samples_shared": bool(getattr(refresh, "reused", 0)),
        "experiences": str(folder / "experiences.jsonl"),
        "solved_per_iteration": solved_per_iteration(folder / "experiences.jsonl"),
        "adapter": str(module.adapter_dir()) if trainer.global_step else None,
    }


def solved_per_iteration(path: Path) -> list[dict[str, int]]:
    """Per refresh (iteration): problems sampled, and problems with at least one sampled program passing every test."""
    sampled: dict[int, set[str]] = {}
    solved: dict[int, set[str]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            epoch, pid = int(row["epoch"]), row["candidate"]["problem_id"]
            sampled.setdefault(epoch, set()).add(pid)
            if row["verdict"]["results"] and all(r["status"] == "passed" for r in row["verdict"]["results"]):
                solved.setdefault(epoch, set()).add(pid)
    return [{"iteration": e, "problems": len(sampled[e]), "solved": len(solved.get(e, ()))} for e in sorted(sampled)]


def buffer_record(data: BTPDataModule) -> dict[str, Any]:
    """Buffer statistics, the P2Value histogram on [0, 1] (the bins of every evaluation report: ``P2ValueMetric``),
    and which models wrote the stored candidates."""
    items = data.buffer.experiences
    histogram = add_to_metric(P2ValueMetric(), items)
    return {
        **{k.removeprefix("buffer/"): v for k, v in data.buffer.stats().items()},
        "p2value_hist": {"edges": histogram.bin_edges.tolist(), "counts": histogram.histograms()["p2value"]},
        "sources": sorted({e.candidate.source for e in items}),
        "train_problems": len(data.train_problems),
    }


def without_overlap(data: BTPDataModule, sets: list[ProblemSet]) -> None:
    """Load the training problems now, less any that is an evaluation problem of ``sets`` (same id, statement or
    asserts): the datamodule checks overlap only against its own held-out set (the validation set in a campaign)."""
    train = data.train_set.load()
    held = [p for problems in sets for p in problems.load()]
    dropped = {train_id for train_id, _ in check_overlap(train, held, allow=True)}
    if dropped:
        log.warning("dropped %d training problems that overlap the validation or test sets: %s", len(dropped), sorted(dropped))
    data.train_problems = [p for p in train if p.id not in dropped]


def fit_variant(
    config: dict[str, Any],
    folder: Path,
    cache: Any | None = None,
    stop_if_empty: bool = False,
    validation: ProblemSet | None = None,
    test_sets: list[ProblemSet] | None = None,
    resume: bool = False,
) -> dict[str, Any]:
    """Build the fit config's objects (seeded by its ``seed_everything``) with every output in ``folder`` and fit.
    With ``validation``: it is the fit's held-out set, validated after every iteration (``eval_val_epoch{N}.json``)
    with each iteration's adapter kept; without, fit-time validation is off. ``test_sets``' problems are dropped
    from training. ``resume`` continues from ``checkpoints/last.ckpt``. The config as run (``config`` with the
    folder and the validation settings) is written to ``fit_config.yaml``: ``cli.py fit --config`` reruns it."""
    folder.mkdir(parents=True, exist_ok=True)
    runner: dict[str, Any] = {"trainer.default_root_dir": str(folder)}
    if validation is None:
        runner["trainer.limit_val_batches"] = 0
    else:
        runner |= {"data.held_out": asdict(validation), "trainer.check_val_every_n_epoch": 1,
                   "trainer.limit_val_batches": 1.0}
    ran = layer(config, runner)
    if not resume:
        atomic_write_text(folder / "fit_config.yaml", yaml.safe_dump(ran, sort_keys=False))
    callbacks = ([StopOnEmptyBuffer()] if stop_if_empty else []) + [EpochAdapters()]
    cli = run_lightning_cli(ran, run=False, trainer_defaults={"callbacks": callbacks})
    if test_sets:  # the datamodule's own check (against its held-out set) is skipped once train_problems is set
        without_overlap(cli.datamodule, test_sets + ([validation] if validation is not None else []))
    start = time.perf_counter()
    record: dict[str, Any] = {"seconds": {}}
    record.update(fit(cli, folder, cache, "last" if resume else None))
    record["trained"] = record["optimizer_steps"] > 0
    record["seconds"]["fit"] = time.perf_counter() - start
    record["validation"] = curve(folder, record["iterations"]) if validation is not None else None
    record["chosen"] = choose(record["validation"] or []) if validation is not None else None
    record["train_problems"] = len(cli.datamodule.train_problems)
    record["replay"] = asdict(cli.datamodule.buffer.settings)
    del cli
    gc.collect()
    return record


def test_variant(
    config: dict[str, Any], folder: Path, held_out: dict[str, ProblemSet] | None, adapter: str | None, train: bool = True
) -> dict[str, Any]:
    """Test the variant's weights on each of ``held_out`` (default: the config's ``data.held_out``, named
    ``held_out``): the base model with ``adapter`` loaded (a LoRA adapter folder), or the untrained model
    (``train`` false or no adapter)."""
    runner = {"trainer.default_root_dir": str(folder), "trainer.limit_val_batches": 0}
    if not train or adapter is None:
        runner["model.lora"] = None
    cli = run_lightning_cli(layer(config, runner), run=False)
    if adapter is not None and train:
        load_adapter(cli.model, Path(adapter))
    start = time.perf_counter()
    sets = held_out or {"held_out": cli.datamodule.held_out_set}
    record: dict[str, Any] = {"tested_adapter": adapter, "seconds": {}}
    record["evaluations"] = {name: tested_set(cli, problems, folder / "eval" / name, adapter if train else None)
                             for name, problems in sets.items()}
    record["seconds"]["evaluate"] = time.perf_counter() - start
    record["held_out"] = next(iter(record["evaluations"].values()))
    record["model"] = asdict(cli.model.spec)
    seed = cli.config["seed_everything"]
    record["seed"] = seed if isinstance(seed, int) and not isinstance(seed, bool) else 0
    del cli
    gc.collect()
    return record


def load_adapter(module: Any, path: Path) -> None:
    """Load the LoRA weights saved in ``path`` (``save_pretrained``) into the module's freshly built adapter."""
    if not (path / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{path} holds no saved LoRA adapter (adapter_config.json); rerun the variant's fit")
    module.configure_model()
    result = set_peft_model_state_dict(module.model, load_peft_weights(str(path)))
    missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
    if missing or getattr(result, "unexpected_keys", []):
        raise ValueError(f"adapter {path} does not fit this model's LoRA (missing {missing[:3]}, unexpected "
                         f"{list(result.unexpected_keys)[:3]}): model.lora must be the one the fit used")


def tested_set(cli: Any, problems: ProblemSet, folder: Path, adapter: str | None) -> dict[str, Any]:
    """``held_out_record`` of one set, kept across a stop: a set this folder already tested with the same weights
    (``adapter``; None = untrained) and the same problems is read back from its marker (``tested.json``, written
    after the evaluation JSON), so a campaign killed between two sets resumes at the set it was on."""
    marker = folder / "tested.json"
    identity = {"adapter": adapter, "problems": asdict(problems)}
    if marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if {k: done.get(k) for k in identity} == json.loads(json.dumps(identity)) and Path(done["eval_json"]).is_file():
            log.info("%s: reusing %s (tested before a stop)", folder.name, done["eval_json"])
            return {"eval_json": done["eval_json"], "metrics": done["metrics"]}
    result = held_out_record(cli, problems, folder)
    atomic_write_text(marker, json.dumps({**identity, **result}, indent=2))
    return result


def held_out_record(cli: Any, problems: ProblemSet, folder: Path) -> dict[str, Any]:
    """``trainer.test`` of the variant's weights on ``problems``; the evaluation JSON goes to ``folder``."""
    trainer = cli.config["trainer"]
    path = held_out_test(cli.model, problems, folder, cli.datamodule.hparams.eval_batch_size,
                   accelerator=trainer["accelerator"], precision=trainer["precision"])
    return {"eval_json": str(path), "metrics": EvalReport.from_json(path).metrics}
