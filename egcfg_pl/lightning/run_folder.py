"""One folder per run: ``trainer.default_root_dir`` decides where every output of a fit goes.

Layout of ``<default_root_dir>/``::

    adapter/                 the LoRA adapter (rewritten each epoch; the final one after the fit)
    checkpoints/last.ckpt    the resumable state (``--ckpt_path last``), plus ModelCheckpoint's other files
    tb/                      TensorBoard events (and config.yaml); a resume appends here, no version_N folders
    eval_{stage}_epoch{N}.json   held-out results
    experiences.jsonl        every refresh's experiences, each refresh exactly once
    refresh_spill/           problems tested by an unfinished refresh (removed once the run has moved on)

A resume (``--ckpt_path last``) continues the same folder. The CLI fills in the logger and the checkpoint
folder from ``default_root_dir`` (``apply_to_cli_config``) unless the YAML names them itself.
"""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Any

from egcfg_pl.models import EMBEDDED_ALIAS

log = logging.getLogger(__name__)

TB_DIR, CKPT_DIR, ADAPTER_DIR, EXPERIENCES = "tb", "checkpoints", "adapter", "experiences.jsonl"
TENSORBOARD = "lightning.pytorch.loggers.TensorBoardLogger"
MODEL_CHECKPOINT = "lightning.pytorch.callbacks.ModelCheckpoint"

PUBLIC_BASE_IDS = {EMBEDDED_ALIAS: "HuggingFaceTB/SmolLM2-135M-Instruct"}
"""Hub id written into a saved adapter's ``base_model_name_or_path`` for local aliases, so
``AutoPeftModelForCausalLM.from_pretrained(adapter)`` loads the right base for anyone with the hub."""


def eval_json(folder: Path, stage: str, epoch: int) -> Path:
    return Path(folder) / f"eval_{stage}_epoch{epoch}.json"


def latest_eval_json(folder: Path, stage: str) -> Path:
    """The evaluation JSON of ``stage`` with the highest epoch in ``folder`` (what the last evaluation wrote)."""
    found = sorted(Path(folder).glob(f"eval_{stage}_epoch*.json"), key=lambda p: int(p.stem.rsplit("epoch", 1)[1]))
    if not found:
        raise FileNotFoundError(f"no {stage} evaluation JSON in {folder}: the {stage} stage ran on no problems")
    return found[-1]


def run_root(trainer: Any) -> Path:
    return Path(trainer.default_root_dir)


def checkpoint_dir(trainer: Any) -> Path:
    """The first ModelCheckpoint's folder (where ``--ckpt_path last`` looks), else ``<root>/checkpoints``."""
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(callback, "dirpath", None):
            return Path(callback.dirpath)
    return run_root(trainer) / CKPT_DIR


def _get(node: Any, key: str, default: Any = None) -> Any:
    if node is None:
        return default
    if isinstance(node, dict):
        return node.get(key, default)
    return getattr(node, key, default)


def _set(node: Any, key: str, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        setattr(node, key, value)


def apply_to_cli_config(config: Any) -> None:
    """Point the TensorBoard logger and ModelCheckpoint folders at ``trainer.default_root_dir``.

    Only what the YAML left open is filled in: a TensorBoard logger in ``<root>/tb`` with a fixed version
    (a resume or a failed start appends to the same folder) and no ``hp_metric``; ModelCheckpoint's
    ``dirpath`` ``<root>/checkpoints``. A logger or dirpath the YAML sets explicitly is kept.
    """
    trainer = _get(config, "trainer")
    if trainer is None:
        return
    root = _get(trainer, "default_root_dir") or "."
    logger = _get(trainer, "logger")
    if logger is None or logger is True:
        _set(trainer, "logger", {"class_path": TENSORBOARD, "init_args": {
            "save_dir": str(root), "name": TB_DIR, "version": "", "default_hp_metric": False}})
    for callback in _get(trainer, "callbacks") or []:
        if _get(callback, "class_path") == MODEL_CHECKPOINT:
            args = _get(callback, "init_args")
            if args is not None and _get(args, "dirpath") is None:
                _set(args, "dirpath", str(Path(str(root)) / CKPT_DIR))


def resume_command(ckpt: Path, by_last: bool = True) -> str:
    """How to continue this run: the same command line with ``--ckpt_path last`` (``by_last``: a
    ModelCheckpoint keeps ``last.ckpt`` there, so Lightning finds it) or with the file's path."""
    argv = list(sys.argv)
    if argv and Path(argv[0]).name == "cli.py" and "fit" in argv:
        kept: list[str] = []
        skip = False
        for arg in argv[1:]:
            if skip:
                skip = False
                continue
            if arg == "--ckpt_path":
                skip = True
                continue
            if not arg.startswith("--ckpt_path="):
                kept.append(arg)
        target = "last" if by_last else str(ckpt)
        return shlex.join([Path(sys.executable).name, argv[0], *kept, "--ckpt_path", target])
    return f"trainer.fit(module, datamodule, ckpt_path={str(ckpt)!r})"


def print_summary(trainer: Any, module: Any) -> None:
    """Where this fit's outputs are (rank 0 prints)."""
    if not trainer.is_global_zero:
        return
    root = run_root(trainer)
    ckpt = getattr(trainer.checkpoint_callback, "last_model_path", "") if trainer.checkpoint_callback else ""
    results = sorted(str(p) for p in Path(module.output_dir()).glob("eval_*.json"))
    tb = getattr(trainer.logger, "log_dir", None)
    lines = [f"run folder:       {root}"]
    if module.lora is not None and module.adapter_dir().is_dir():
        lines.append(f"LoRA adapter:     {module.adapter_dir()}")
    lines.append(f"last checkpoint:  {ckpt or '- (no ModelCheckpoint with save_last)'}")
    lines.append(f"results:          {', '.join(results) if results else '- (no held-out evaluation ran)'}")
    if (root / EXPERIENCES).is_file():
        lines.append(f"experiences:      {root / EXPERIENCES}")
    if tb:
        lines.append(f"TensorBoard:      tensorboard --logdir {tb}")
    print("\n".join(lines), flush=True)
