"""Turn replay experiences into causal-LM training batches: prompt + program, loss on the program only."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
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
    right padding, so the loss is the causal-LM loss of the program tokens given the prompt. Sequences
    longer than ``max_length`` keep the whole prompt where possible and cut the program's tail.

    The prompt is tokenised exactly as the sampler tokenises it (``encode_prompt``: BOS / special tokens
    added unless the text already starts with BOS), so training conditions on the same ids as generation.
    """

    tokenizer: Any
    template: PromptTemplate
    problems: Mapping[str, Problem]
    max_length: int = 1024

    def encode(self, exp: Experience) -> tuple[list[int], list[int]]:
        # imported here: egcfg_pl.sampling.beam imports transformers' generation code (~0.7 s), which
        # this module does not otherwise need at import time
        from egcfg_pl.sampling.beam import encode_prompt

        problem = self.problems[exp.problem_id]
        prompt = encode_prompt(self.tokenizer, build_prompt(problem, self.tokenizer, self.template))
        response = self.tokenizer(format_response(exp.program, self.template, problem), add_special_tokens=False)
        response = response["input_ids"] + [self.tokenizer.eos_token_id]
        if len(prompt) + len(response) > self.max_length:  # keep the prompt's end (the question)
            prompt = prompt[-max(self.max_length - len(response), self.max_length // 2) :]
        ids = (prompt + response)[: self.max_length]
        labels = ([IGNORE_INDEX] * len(prompt) + response)[: self.max_length]
        return ids, labels

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
