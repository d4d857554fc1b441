"""Exact beam-search log-probs recorded during the search, so beam candidates need no teacher-forced re-score.

HF beam search takes ``log_softmax`` of each row's fp32 logits (T = 1; our config adds no warpers) and keeps the
top ``K = max(2, 1 + n_eos) * num_beams`` continuations of the flattened ``beams x vocab`` scores. A token that is
not among its own row's top K cannot be among the global top K (K tokens of the same row score higher), so every
token a kept beam chose is in its row's top K. ``BeamLogprobRecorder``, a logits processor (it returns the scores
unchanged), records each row's top-K ``log p`` per prefix; a candidate's log-prob is then the sum of the recorded
entries along its tokens: the same numbers the search used, i.e. a forward pass over the row's prefix, at a cost
of a top-k per step instead of a second pass over every kept token. Storing whole vocabularies per step
(``output_scores``) would take ~1 GB for beam 5 x 8 problems x 128 tokens.

Prefixes are interned as a trie: a row of step j is its parent row of step j - 1 (found by comparing the
sequences, since the search reorders rows) plus one token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LogitsProcessor


class BeamLogprobRecorder(LogitsProcessor):
    """Records, per generated prefix, the top-``k`` log-probs of the next token (see module docstring)."""

    def __init__(self, k: int, rows_per_prompt: int):
        self.k = k
        self.rows_per_prompt = rows_per_prompt
        self.tables: list[dict[int, float]] = []  # node -> {token: log p of that token after the node's prefix}
        self.children: dict[tuple[int, int], int] = {}  # (node, token) -> child node
        self.roots: list[int] = []  # node of prompt b (before any generated token)
        self._previous: torch.Tensor | None = None  # (rows, len) sequences of the last step
        self._nodes: list[int] = []  # node of each row of the last step

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        nodes = self._locate(input_ids)
        values, tokens = scores.topk(min(self.k, scores.shape[-1]), dim=-1)
        for node, vs, ts in zip(nodes, values.tolist(), tokens.tolist()):
            if not self.tables[node]:
                self.tables[node] = dict(zip(ts, vs))
        self._previous, self._nodes = input_ids.clone(), nodes
        return scores

    def _new_node(self) -> int:
        self.tables.append({})
        return len(self.tables) - 1

    def _locate(self, input_ids: torch.Tensor) -> list[int]:
        if self._previous is None:  # first step: rows are the prompts, repeated per beam
            self.roots = [self._new_node() for _ in range(input_ids.shape[0] // self.rows_per_prompt)]
            return [self.roots[r // self.rows_per_prompt] for r in range(input_ids.shape[0])]
        same = (input_ids[:, None, :-1] == self._previous[None]).all(-1)  # (rows, previous rows)
        parents = same.int().argmax(-1).tolist()
        nodes = []
        for row, (parent, token) in enumerate(zip(parents, input_ids[:, -1].tolist())):
            if not same[row, parent]:  # not expected: an unreachable node, so ``logprob`` says None
                nodes.append(self._new_node())
                continue
            key = (self._nodes[parent], token)
            if key not in self.children:
                self.children[key] = self._new_node()
            nodes.append(self.children[key])
        return nodes

    def logprob(self, prompt_index: int, tokens: Sequence[int]) -> float | None:
        """Σ log p over ``tokens`` after prompt ``prompt_index``, or None if a step was not recorded."""
        node, total = self.roots[prompt_index], 0.0
        for j, token in enumerate(tokens):
            lp = self.tables[node].get(token)
            if lp is None:
                return None
            total += lp
            if j + 1 < len(tokens):
                node = self.children.get((node, token))
                if node is None:
                    return None
        return total
