"""Let ``torch.load(weights_only=True)`` (Lightning's default on resume) rebuild our config dataclasses.

The hyper-parameters saved in a checkpoint hold these settings objects; without the allow-list a resume
fails with "Unsupported global". Only plain data classes of this package are listed.
"""

from __future__ import annotations

import torch

from egcfg_pl.models import LoraSettings, ModelSpec
from egcfg_pl.problems import ProblemSet
from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.replay.buffer import ReplaySettings
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox import SandboxConfig

CHECKPOINT_TYPES = (LoraSettings, ModelSpec, ProblemSet, PromptTemplate, ReplaySettings, GenerationSettings, SandboxConfig)
torch.serialization.add_safe_globals(list(CHECKPOINT_TYPES))
