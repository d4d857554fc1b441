"""The one place a ``Sampler`` is built: an API, a separate local source model, or the live target weights.

The module (held-out answers, the self-improvement refresh) and the refresh callback (big-to-small and hybrid
sources) both call ``build_sampler``; they only decide what to keep between calls (an API sampler and a loaded
source model are kept; a sampler over the target is rebuilt each time, since it wraps the weights as they are now).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from egcfg_pl.prompts import PromptTemplate
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.settings import GenerationSettings

if TYPE_CHECKING:
    from egcfg_pl.models import ModelSpec
    from egcfg_pl.sampling.api import ApiSettings


def build_sampler(
    generation: GenerationSettings,
    template: PromptTemplate,
    *,
    api: ApiSettings | None = None,
    source: ModelSpec | None = None,
    model: Any = None,
    tokenizer: Any = None,
    device: Any = None,
    name: str = "",
) -> Sampler:
    """An ``ApiSampler`` when ``api`` is set (its own settings decide n and decoding); else an ``HFSampler`` over
    ``source`` (loaded now, moved to ``device``) or over the given ``model`` + ``tokenizer``."""
    if api is not None:
        from egcfg_pl.sampling.api import ApiSampler  # imports openai only when an API is configured

        return ApiSampler(api, template)
    from egcfg_pl.sampling.beam import HFSampler

    if source is not None:
        from egcfg_pl.models import load_model, load_tokenizer

        model, tokenizer, name = load_model(source), load_tokenizer(source), name or source.name
        if device is not None:
            model.to(device)
    if model is None or tokenizer is None:
        raise ValueError("build_sampler: give api, source, or model and tokenizer")
    return HFSampler(model, tokenizer, generation, template, name=name)
