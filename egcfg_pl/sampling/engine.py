"""Continuous-batching decoder for greedy and nucleus sampling, with exact log-probs read off the decoding.

Why not ``model.generate``: a ``generate`` batch lasts as long as its longest row, so one answer that rambles to
``max_new_tokens`` holds the 7 finished rows of its batch of 8 for hundreds of steps, and the teacher-forced
re-score then runs every kept token through the model a second time. Here a row leaves the batch the step it
ends (EOS, a stop string, or its token budget) and the next prompts take its slot, so the batch stays full.

Why not transformers' own continuous batching (``generate_batch``): it has no stop strings, its log-probs are
those of the temperature/top-p warped distribution, and it is built around paged attention and CUDA graphs.

Attention: on CPU the decoder runs the model with ``eager`` attention (``HFSampler`` sets it for every strategy,
``GenerationSettings.attention``). torch's CPU SDPA kernel
(``_scaled_dot_product_flash_attention_for_cpu``) spent 56 % of a bf16 decode step (16 rows, one query over ~200
keys) where eager attention's two small matmuls cost a fraction of it: the step took half the time (see
benchmarks/README.md). For grouped-query Llama-like models it is eager's grouped form
(``grouped_attention``), which reads the KV cache in place instead of copying it per query head at every step.
The implementation is switched back after the run.

Log-probs: each kept token's ``log p`` under the model (T = 1, no warping) is taken from the same fp32 logits the
token is chosen from, so ``Σ log p`` over the kept tokens equals a teacher-forced forward pass (tested to 1e-3)
without a second pass. The row's cache is the same keys/values a forward pass computes, only in another batch
layout: left padding (masked) and rows of different lengths side by side, positions given explicitly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

import torch
from transformers.cache_utils import DynamicLayer
from transformers.modeling_outputs import CausalLMOutputWithPast

from egcfg_pl.sampling.grouped_attention import cpu_attention

CACHE_FIELD = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"  # 5.x name


class StopCheck(Protocol):
    def hit(self, ids: Sequence[int]) -> bool: ...


@dataclass(frozen=True)
class Request:
    """One prompt and how to decode it: ``copies`` rows share its prompt pass (the samples of one problem)."""

    prompt: tuple[int, ...]
    stop: StopCheck
    max_new_tokens: int
    copies: int = 1


@dataclass(frozen=True)
class Decoded:
    """One finished row: kept tokens (through EOS / the token completing a stop string) and their Σ log p."""

    request: int  # index into the requests
    copy: int  # which of the request's copies
    token_ids: tuple[int, ...]
    logprob: float
    truncated: bool  # ran out of max_new_tokens before EOS or a stop string


@dataclass(frozen=True)
class Picker:
    """How the next token is chosen from fp32 logits: argmax (``temperature`` None) or nucleus sampling
    (temperature, then the smallest top-p set, as transformers' TopPLogitsWarper; torch's global RNG)."""

    temperature: float | None = None
    top_p: float = 1.0

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        if self.temperature is None:
            return logits.argmax(-1)
        scores = logits / self.temperature
        if self.top_p < 1.0:
            ordered, index = scores.sort(dim=-1, descending=False)
            cumulative = ordered.softmax(-1).cumsum(-1)
            drop = cumulative <= 1 - self.top_p
            drop[..., -1] = False  # keep at least the most likely token
            scores = scores.masked_fill(drop.scatter(-1, index, drop), float("-inf"))
        return torch.multinomial(scores.softmax(-1), 1).squeeze(-1)


@dataclass
class _Row:
    request: int
    copy: int
    ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)


def _left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


class _Batch:
    """The rows being decoded: one KV cache (left padded), attention mask, next positions and next-token logits."""

    def __init__(self) -> None:
        self.rows: list[_Row] = []
        self.cache = None
        self.mask: torch.Tensor | None = None  # (rows, T)
        self.pos: torch.Tensor | None = None  # (rows,): position of the next token
        self.logits: torch.Tensor | None = None  # (rows, vocab) fp32: predicts the next token
        self.tokens: torch.Tensor | None = None  # (rows,): the tokens just chosen, fed in the next forward

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, rows: list[_Row], cache, mask: torch.Tensor, pos: torch.Tensor, logits: torch.Tensor) -> None:
        """Append prefilled rows; the shorter cache is padded on the left (masked) to the longer one."""
        if not self.rows:
            self.rows, self.cache, self.mask, self.pos, self.logits = rows, cache, mask, pos, logits
            return
        width = max(self.mask.shape[1], mask.shape[1])
        for mine, theirs in zip(self.cache.layers, cache.layers):
            mine.keys = torch.cat([_left_pad(mine.keys, width, -2), _left_pad(theirs.keys, width, -2)])
            mine.values = torch.cat([_left_pad(mine.values, width, -2), _left_pad(theirs.values, width, -2)])
        self.mask = torch.cat([_left_pad(self.mask, width, 1), _left_pad(mask, width, 1)])
        self.pos = torch.cat([self.pos, pos])
        self.logits = torch.cat([self.logits, logits])
        self.rows += rows

    def keep(self, keep: list[int]) -> None:
        """Drop the other rows, then the leading cache columns that are padding in every remaining row."""
        if len(keep) == len(self.rows):
            return
        self.select(keep, [self.rows[i] for i in keep])

    def select(self, source: list[int], rows: list[_Row]) -> None:
        """The batch becomes ``rows``, row r continuing old row ``source[r]`` (beam search repeats rows); then the
        leading cache columns that are padding in every remaining row are dropped.

        With as many rows as before, only the rows whose source is another row are copied, in place: the beam
        decoder keeps a beam in its parent's slot where it can, so most steps move a few rows of the cache (which
        holds rows x layers x positions keys and values) instead of gathering all of it."""
        count = len(self.rows)
        self.rows = rows
        if not source:
            self.cache = self.mask = self.pos = self.logits = None
            return
        index = torch.tensor(source, device=self.mask.device)
        if len(source) == count:
            moved = [r for r, s in enumerate(source) if r != s]
            if moved:
                to, of = torch.tensor(moved, device=index.device), index[moved]
                for layer in self.cache.layers:
                    layer.keys[to], layer.values[to] = layer.keys[of], layer.values[of]
        else:
            self.cache.batch_select_indices(index)
        self.mask, self.pos, self.logits = self.mask[index], self.pos[index], self.logits[index]
        first = int(self.mask.any(0).int().argmax())
        if first > 0:
            for layer in self.cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self.mask = self.mask[:, first:]


@contextmanager
def attention(model, implementation: str | None) -> Iterator[None]:
    """Run a block with ``model``'s attention set to ``implementation`` (None: unchanged); restored after."""
    config = getattr(model, "config", None)
    current = getattr(config, "_attn_implementation", None)
    if implementation is None or current is None or current == implementation:
        yield
        return
    model.set_attn_implementation(implementation)
    try:
        yield
    finally:
        model.set_attn_implementation(current)


PREFILL_BUDGET = 2**25
"""Cap on rows x width^2 of one prefill forward. Eager attention materialises (rows, heads, width, width) scores in
fp32 beside their bf16 copy: 32 MBPP prompts of ~2,500 tokens (mbpp/493's float-laden asserts) took the 23 GiB box
out of memory. 2^25 keeps a prefill near 2 GB of scores for SmolLM2's 9 heads; MBPP prompts of ~250 tokens still
prefill 32 at once."""


def prefill_groups(widths: Sequence[int], budget: int) -> list[list[int]]:
    """Consecutive groups of positions in ``widths`` (prompt lengths) whose rows x (widest row)^2 stays within
    ``budget``; a single row may exceed it (it has to run)."""
    groups: list[list[int]] = []
    for k, width in enumerate(widths):
        group = groups[-1] if groups else None
        if group is not None and (len(group) + 1) * max(width, *(widths[j] for j in group)) ** 2 <= budget:
            group.append(k)
        else:
            groups.append([k])
    return groups


class ContinuousDecoder:
    """Decodes requests with at most ``slots`` rows at once; a finished row's slot goes to the next request.

    Requests are admitted longest prompt first (neighbours in length share a prefill, less padding; a new
    prompt is then never wider than the running cache) unless ``longest_first`` is False. Needs a
    model whose cache is plain full-attention ``DynamicLayer`` layers (``supported`` says; sliding-window or
    recurrent caches are not re-laid out here).
    """

    def __init__(
        self,
        model,
        eos_ids: Sequence[int],
        pad_id: int,
        slots: int,
        picker: Picker | None = None,
        attention: str | None = "auto",
        longest_first: bool = True,
        prefill_budget: int = PREFILL_BUDGET,
    ):
        self.model = model
        self.prefill_budget = prefill_budget
        self.longest_first = longest_first
        self.eos_ids = set(eos_ids)
        self.pad_id = pad_id
        self.slots = max(1, slots)
        self.picker = picker or Picker()
        self.device = next(model.parameters()).device
        cpu = cpu_attention(model) if self.device.type == "cpu" else None
        self.attention = cpu if attention == "auto" else attention

    def run(self, requests: Sequence[Request], on_done: Callable[[int], None] | None = None) -> list[Decoded]:
        """Every request's rows, in request order then copy order. ``on_done(i)`` fires when request i ends."""
        with torch.no_grad(), attention(self.model, self.attention):
            return self._run(requests, on_done)

    def _run(self, requests: Sequence[Request], on_done: Callable[[int], None] | None) -> list[Decoded]:
        if any(r.copies > self.slots for r in requests):
            raise ValueError(f"a request has more copies than the decoder's {self.slots} slots")
        queue = list(range(len(requests)))
        if self.longest_first:
            queue.sort(key=lambda i: -len(requests[i].prompt))
        left = {i: requests[i].copies for i in range(len(requests))}
        done: dict[tuple[int, int], Decoded] = {}
        batch = _Batch()
        while queue or len(batch):
            admitted = []
            free = self.slots - len(batch)
            while queue and requests[queue[0]].copies <= free:
                free -= requests[queue[0]].copies
                admitted.append(queue.pop(0))
            widths = [len(requests[i].prompt) for i in admitted]  # one prefill row per request (copies share it)
            for group in prefill_groups(widths, self.prefill_budget):
                self._prefill(batch, requests, [admitted[k] for k in group])
            keep = self._step(batch, requests, done, left, on_done)
            batch.keep(keep)
            if len(batch):
                self._forward(batch)
        return [done[(i, c)] for i in range(len(requests)) for c in range(requests[i].copies)]

    def _prefill(self, batch: _Batch, requests: Sequence[Request], admitted: list[int]) -> None:
        prompts = [requests[i].prompt for i in admitted]
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (width - len(p)) + list(p) for p in prompts], device=self.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=self.device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, logits_to_keep=1)
        cache = getattr(out, CACHE_FIELD)
        if not all(type(layer) is DynamicLayer for layer in cache.layers):
            raise NotImplementedError("ContinuousDecoder needs a full-attention DynamicCache")
        owner = [k for k, i in enumerate(admitted) for _ in range(requests[i].copies)]
        index = torch.tensor(owner, device=self.device)
        if owner != list(range(len(admitted))):
            cache.batch_select_indices(index)  # each copy gets its prompt's keys/values
        rows = [_Row(i, c) for i in admitted for c in range(requests[i].copies)]
        batch.add(rows, cache, mask[index], pos[index, -1] + 1, out.logits[index, -1].float())

    def _step(self, batch: _Batch, requests, done, left, on_done) -> list[int]:
        """Choose each row's next token, record its log p (T = 1), and return the rows that go on."""
        tokens = self.picker(batch.logits)
        logprobs = batch.logits.log_softmax(-1).gather(-1, tokens[:, None]).squeeze(-1)
        keep = []
        for k, (row, token, lp) in enumerate(zip(batch.rows, tokens.tolist(), logprobs.tolist())):
            row.ids.append(token)
            row.logprobs.append(lp)
            request = requests[row.request]
            finished = token in self.eos_ids or request.stop.hit(row.ids)
            if not finished and len(row.ids) < request.max_new_tokens:
                keep.append(k)
                continue
            total = float(torch.tensor(row.logprobs, dtype=torch.float64).sum())
            done[(row.request, row.copy)] = Decoded(row.request, row.copy, tuple(row.ids), total, not finished)
            left[row.request] -= 1
            if left[row.request] == 0 and on_done is not None:
                on_done(row.request)
        batch.tokens = tokens[torch.tensor(keep, dtype=torch.long, device=tokens.device)]
        return keep

    def _forward(self, batch: _Batch) -> None:
        batch.mask = torch.cat([batch.mask, batch.mask.new_ones(len(batch), 1)], dim=1)
        out = self.model(
            input_ids=batch.tokens[:, None],
            attention_mask=batch.mask,
            position_ids=batch.pos[:, None],
            use_cache=True,
            **{CACHE_FIELD: batch.cache},
        )
        batch.pos = batch.pos + 1
        batch.logits = out.logits[:, -1].float()
