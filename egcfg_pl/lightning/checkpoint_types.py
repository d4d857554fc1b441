"""Let ``torch.load(weights_only=True)`` (Lightning's default on resume) rebuild our config dataclasses.

The hyper-parameters saved in a checkpoint hold these settings objects (every dataclass reachable from the
``BTPModule`` / ``BTPDataModule`` init arguments, ``model.api`` of the openai / deepseek modes included);
without the allow-list a resume fails with "Unsupported global". Only plain data classes of this package are
listed; ``tests/test_module_checks.py`` walks the init signatures and fails when a new one is missing here.
"""

from __future__ import annotations

import torch

from egcfg_pl.models import LoraSettings, ModelSpec
from egcfg_pl.problems import ProblemSet
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.replay.buffer import ReplaySettings
from egcfg_pl.sampling.api import ApiSettings
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig

CHECKPOINT_TYPES = (
    LoraSettings, ModelSpec, ProblemSet, PromptTemplate, ReplaySettings, GenerationSettings, SandboxConfig, ApiSettings,
)
torch.serialization.add_safe_globals(list(CHECKPOINT_TYPES))
