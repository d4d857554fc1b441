"""Candidate sources behind one interface (``Sampler``): a local HF model (``beam.HFSampler``: beam search,
greedy or sampling) or an OpenAI-compatible API (``api.ApiSampler``); ``factory.build_sampler`` builds either.

The samplers are exported lazily, so importing the records here does not import transformers.
"""

from __future__ import annotations

from typing import Any

from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sampling.settings import GenerationSettings

_LAZY = {"HFSampler": "beam", "ApiSampler": "api", "ApiSettings": "api", "build_sampler": "factory"}

__all__ = ["Candidate", "GenerationSettings", "Sampler", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"egcfg_pl.sampling.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
