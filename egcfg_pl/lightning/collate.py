"""Turn replay experiences into causal-LM training batches: prompt + program, loss on the program only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from egcfg_pl.problems.problem import Problem
from egcfg_pl.prompts import PromptTemplate, build_prompt, format_response
from egcfg_pl.replay.experience import Experience

IGNORE_INDEX = -100  # label value that torch's cross-entropy (and HF models) skip


@dataclass
class ReplayCollator:
    """Tokenises each (problem prompt, stored program) pair for the *target* model.

    The prompt is rebuilt with the target's own template, so programs written by another source (an API,
    a bigger model) are learned in the target's format. Labels are ``IGNORE_INDEX`` on the prompt and on
    right padding, so the loss is the causal-LM loss of the program tokens given the prompt.

    The prompt is tokenised exactly as the sampler tokenises it (``encode_prompt``: BOS / special tokens
    added unless the text already starts with BOS), so training conditions on the same ids as generation.
    It is never cut: an experience whose prompt leaves no room for a program token within ``max_length`` does
    not ``fit`` (the datamodule keeps such experiences out of the draws and the buffer statistics count them,
    ``buffer/skipped_long_prompt``); encoding one raises. A program longer than the room left loses its tail,
    and with it the closing fence and EOS, so it is not taught to end early.

    A truncated program (``Candidate.truncated``: cut off by the sampler's token budget) is learned without the
    closing fence and EOS (``data.replay.truncated: no_eos``); by default it is not drawn at all (``skip``).
    """

    tokenizer: Any
    template: PromptTemplate
    problems: Mapping[str, Problem]
    max_length: int = 1024
    _prompt_ids: dict[str, list[int]] = field(default_factory=dict, init=False, repr=False)

    def prompt_ids(self, problem_id: str) -> list[int]:
        """The prompt's token ids as the sampler feeds them (cached per problem)."""
        if problem_id not in self._prompt_ids:
            # imported here: egcfg_pl.sampling.beam imports transformers' generation code (~0.7 s), which
            # this module does not otherwise need at import time
            from egcfg_pl.sampling.beam import encode_prompt

            text = build_prompt(self.problems[problem_id], self.tokenizer, self.template)
            self._prompt_ids[problem_id] = encode_prompt(self.tokenizer, text)
        return self._prompt_ids[problem_id]

    def fits(self, exp: Experience) -> bool:
        """The whole prompt and at least one program token fit in ``max_length``."""
        return len(self.prompt_ids(exp.problem_id)) < self.max_length

    def encode(self, exp: Experience) -> tuple[list[int], list[int]]:
        prompt = self.prompt_ids(exp.problem_id)
        if len(prompt) >= self.max_length:
            raise ValueError(
                f"the prompt of {exp.problem_id} has {len(prompt)} tokens, no room for the program within "
                f"data.max_length = {self.max_length}: raise data.max_length (such experiences are never drawn)"
            )
        finished = not exp.candidate.truncated
        text = format_response(exp.program, self.template, self.problems[exp.problem_id], finished=finished)
        response = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        response = (response + [self.tokenizer.eos_token_id] if finished else response)[: self.max_length - len(prompt)]
        return prompt + response, [IGNORE_INDEX] * len(prompt) + response

    def __call__(self, batch: Sequence[Experience]) -> dict[str, torch.Tensor]:
        encoded = [self.encode(exp) for exp in batch]
        width = max(len(ids) for ids, _ in encoded)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        input_ids = torch.full((len(batch), width), pad, dtype=torch.long)  # (B, T), right-padded
        labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for row, (ids, lab) in enumerate(encoded):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            labels[row, : len(lab)] = torch.tensor(lab)
            attention[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}
