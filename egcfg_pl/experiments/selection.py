"""Model selection on the validation set (PROTOCOL.md): one adapter and one validation per BTP iteration, the
pre-registered rule that picks the iteration, and ``chosen.yaml``, the selection written (and committed) before
any test set is evaluated.

- ``EpochAdapters``: keeps each iteration's LoRA adapter (``adapter_epoch{N}/``); the module's own ``adapter/`` is
  rewritten every epoch, so without it only the last iteration could be tested.
- ``curve``: the validation pass@1 and average test pass rate per iteration, read from the module's
  ``eval_val_epoch{N}.json`` (Lightning validates after every epoch when the fit config holds a held-out set).
- ``choose``: the highest validation pass@1; ties: the higher average pass rate, then the earlier iteration.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import lightning as L
import yaml

from egcfg_pl.crash_safe import atomic_write_text
from egcfg_pl.experiments.stats import per_problem
from egcfg_pl.lightning.run_folder import eval_json
from egcfg_pl.metrics.report import EvalReport

CHOSEN = "chosen.yaml"
log = logging.getLogger(__name__)


def adapter_of_epoch(folder: Path, epoch: int) -> Path:
    return Path(folder) / f"adapter_epoch{epoch}"


class EpochAdapters(L.Callback):
    """Saves the LoRA adapter of every finished iteration to ``<default_root_dir>/adapter_epoch{N}/``: the weights
    that iteration's validation scored (Lightning validates before the epoch-end hooks)."""

    @staticmethod
    def save(trainer: L.Trainer, pl_module: Any, epoch: int) -> None:
        if getattr(pl_module, "lora", None) is not None and trainer.is_global_zero:
            pl_module.save_adapter(adapter_of_epoch(Path(trainer.default_root_dir), epoch))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: Any) -> None:
        self.save(trainer, pl_module, trainer.current_epoch)

    def on_train_start(self, trainer: L.Trainer, pl_module: Any) -> None:
        """A fit resumed from the checkpoint of an iteration whose adapter was never saved (killed between the two:
        the checkpoint is written at validation end, the adapter after it) saves it now from the restored weights,
        the ones that iteration's validation scored; without this the iteration would drop out of the selection."""
        root, last = Path(trainer.default_root_dir), trainer.current_epoch - 1
        if last < 0 or adapter_of_epoch(root, last).is_dir() or not eval_json(root, "val", last).is_file():
            return
        log.warning("iteration %d was validated but its adapter was not kept (a stop between the two); saving it "
                    "from the resumed checkpoint", last)
        self.save(trainer, pl_module, last)


def scores(path: Path) -> dict[str, float]:
    """pass@1 (mean of c / n per problem) and the average test pass rate of one evaluation JSON."""
    report = EvalReport.from_json(path)
    by_problem = per_problem(report)
    n = max(len(report.problems), 1)
    return {metric: sum(values.values()) / n for metric, values in by_problem.items()} | {"num_problems": len(report.problems)}


def curve(folder: Path, epochs: int) -> list[dict[str, Any]]:
    """Validation scores of iterations 0..epochs-1 that were validated and whose adapter was kept."""
    points = []
    for epoch in range(epochs):
        path = eval_json(folder, "val", epoch)
        if path.is_file() and adapter_of_epoch(folder, epoch).is_dir():
            points.append({"iteration": epoch, **scores(path)})
    return points


def choose(points: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pre-registered rule: highest validation pass@1, ties to the higher average pass rate, then the earlier
    iteration. None when no iteration was validated (no optimizer step: the untrained weights stand)."""
    if not points:
        return None
    return min(points, key=lambda p: (-p["pass@1"], -p["avg_pass_rate"], p["iteration"]))


def read_chosen(root: Path) -> dict[str, Any]:
    path = Path(root) / CHOSEN
    if not path.is_file():
        return {}
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(data, dict) or not isinstance(data.get("variants", {}), dict):
        raise ValueError(f"{path}: expected a mapping with 'variants: {{name: {{key, iteration, ...}}}}'")
    return data.get("variants", {})


def write_chosen(root: Path, entries: dict[str, Any], rule: str) -> Path:
    header = ("# Written by `cli.py experiment` after the validation runs, before any test set is evaluated\n"
              "# (PROTOCOL.md): commit it, then rerun the campaign without --until to test these iterations.\n")
    plain = json.loads(json.dumps({"rule": rule, "variants": entries}))  # no YAML anchors for shared entries
    body = yaml.safe_dump(plain, sort_keys=False, width=120)
    return atomic_write_text(Path(root) / CHOSEN, header + body)


RULE = "highest validation pass@1; ties: higher validation average pass rate, then the earlier iteration"
