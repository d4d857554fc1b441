"""Settings are handed over, not fetched: the datamodule's training batches use what ``connect`` gave it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from btp_helpers import tiny_datamodule
from egcfg_pl.prompts import PromptTemplate


def test_train_dataloader_uses_connect_not_the_trainers_module(smol_tokenizer):
    dm = tiny_datamodule()
    dm.trainer = SimpleNamespace(world_size=1, global_rank=0)  # no lightning_module to reach through
    with pytest.raises(RuntimeError, match=r"connect\(tokenizer, template, mode\) must run before training"):
        dm.train_dataloader()
    template = PromptTemplate()
    dm.connect(smol_tokenizer, template, "finetune")
    collate = dm.train_dataloader().collate_fn
    assert collate.tokenizer is smol_tokenizer and collate.template is template
    dm.connect(None, template, "btp_only")  # nothing is trained: experiences pass through untokenised
    assert dm.train_dataloader().collate_fn is not collate
