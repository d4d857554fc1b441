"""A refresh's tested candidates, written to disk problem by problem, so a kill mid-refresh loses nothing.

A refresh (sample + sandbox for every chosen training problem) can take hours with a large model. The
callback appends each problem's experiences to ``<default_root_dir>/refresh_spill/epoch{E}_rank{R}.jsonl``
as soon as its chunk is tested (one JSON line per problem, fsynced; a torn last line is ignored). When the
same refresh runs again (a resumed fit restarts the interrupted epoch from the last checkpoint), the
problems found in the spill are not sampled again.

Reuse is only safe when the second attempt would sample and test the same thing, so every line carries a
fingerprint of what determines the experiences: epoch, rank, world size, each problem of the shard (id,
statement, prompt, tests, set-up code: ``problem_digest``), the generation / source / replay settings, and
a hash of the sampling model's trainable weights (the LoRA adapter; the frozen base is named by the model
spec). Lines with another fingerprint are ignored. Only a resumed fit reads the spill: a fresh fit removes
it (``ReplayRefresh.on_train_start``). Spill files of earlier epochs are removed once a later refresh
starts (their experiences are in the buffer, which the epoch-end checkpoint holds), and the whole folder
when the fit finishes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from egcfg_pl.crash_safe import append_line
from egcfg_pl.problems.problem import Problem
from egcfg_pl.replay.experience import Experience, experience_from_dict, experience_to_dict

log = logging.getLogger(__name__)

SPILL_DIR = "refresh_spill"
_NAME = re.compile(r"epoch(\d+)_rank(\d+)\.jsonl$")


def weights_digest(module: torch.nn.Module | None) -> str:
    """sha256 over the trainable parameters (names, shapes, bytes); '' for none."""
    if module is None:
        return ""
    h = hashlib.sha256()
    for name, param in module.named_parameters():
        if param.requires_grad:
            data = param.detach().to("cpu", torch.float32).contiguous()
            h.update(name.encode())
            h.update(str(tuple(data.shape)).encode())
            h.update(data.numpy().tobytes())
    return h.hexdigest()


def problem_digest(problem: Problem) -> str:
    """sha256 of everything a problem's experiences depend on (its ``meta`` aside): id, statement, prompt,
    tests, set-up code, entry point. An edited test changes the digest, so stale verdicts are never reused."""
    fields = {f.name: getattr(problem, f.name) for f in dataclasses.fields(problem) if f.name != "meta"}
    return hashlib.sha256(repr(sorted(fields.items())).encode()).hexdigest()


def fingerprint(epoch: int, rank: int, world_size: int, problems: Sequence[str], settings: Iterable[Any],
                weights: str) -> str:
    """What decides a refresh's experiences, hashed: ``problems`` are ``problem_digest``s (settings are
    dataclasses or None; their repr is stable)."""
    text = json.dumps([epoch, rank, world_size, list(problems), [repr(s) for s in settings], weights])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class RefreshSpill:
    """One rank's spill file for one epoch."""

    def __init__(self, root: Path, epoch: int, rank: int, fingerprint: str):
        self.folder = Path(root) / SPILL_DIR
        self.path = self.folder / f"epoch{epoch}_rank{rank}.jsonl"
        self.epoch, self.rank, self.fingerprint = epoch, rank, fingerprint

    def load(self) -> dict[str, list[Experience]]:
        """Experiences by problem id from an earlier attempt at this very refresh ({} when none)."""
        done: dict[str, list[Experience]] = {}
        if not self.path.exists():
            return done
        stale = 0
        with open(self.path, encoding="utf-8") as f:
            for line in f:
                try:
                    row = json.loads(line)
                    if row["fingerprint"] != self.fingerprint:
                        stale += 1
                        continue
                    done[row["problem_id"]] = [experience_from_dict(e) for e in row["experiences"]]
                except (ValueError, KeyError, TypeError):
                    continue  # a line torn by a kill
        if done:
            log.info("refresh epoch %d rank %d: reusing %d tested problems from %s", self.epoch, self.rank,
                     len(done), self.path)
        if stale:
            log.info("refresh spill %s: ignored %d lines from a different run or model state", self.path, stale)
        return done

    def append(self, problem_id: str, experiences: Sequence[Experience]) -> None:
        row = {"fingerprint": self.fingerprint, "problem_id": problem_id,
               "experiences": [experience_to_dict(e) for e in experiences]}
        append_line(self.path, json.dumps(row))

    def remove_older(self) -> None:
        """Delete this rank's spill files of earlier epochs (those refreshes finished)."""
        if not self.folder.is_dir():
            return
        for path in self.folder.iterdir():
            m = _NAME.search(path.name)
            if m and int(m.group(2)) == self.rank and int(m.group(1)) < self.epoch:
                path.unlink(missing_ok=True)
