"""Beam search on the continuous-batching decoder: a problem's beams leave the batch the step its search ends, and
the next problem's beams are prefilled into their slots.

Why: a ``model.generate`` beam batch runs until the search of its slowest problem ends, so the problems whose
hypotheses were done early hold their rows for the rest (beam 5 through ``generate`` was only 1.17x plain
batched ``generate`` with recorded scores). Here each problem's ``num_beams`` rows leave the step its search is
done, and the log-probs are read off the decoding logits (no re-score, no recorder).

The search is transformers 5's ``_beam_search`` (``generation/utils.py``) per problem, with the same fp32
arithmetic, so it returns the same hypotheses and scores as ``generate(num_beams=K)`` on the problem alone:

* each step, every beam's fp32 ``log_softmax`` (T = 1, no processors) plus the beam's running score; the top
  ``C = max(2, 1 + n_eos) * K`` of the problem's ``K x vocab`` continuations (one ``topk`` over the flattened
  beams, beams in score order as there);
* a continuation *ends* on EOS, on a stop string (the ``StopOnStrings`` criterion the ``generate`` path passes),
  or at the problem's token budget. An ended continuation among the first K of the C is a finished hypothesis
  scored ``Σ log p / length ** length_penalty``; the K best finished hypotheses are kept;
* the K best continuations that did not end run on (ended ones get -1e9 as there, so with fewer than K open
  continuations "dead" beams run on, as they do there);
* the problem is done when no running beam can beat the worst of K finished hypotheses (transformers'
  early-stop heuristic for the ``early_stopping`` setting), when ``early_stopping is True`` and K hypotheses are
  finished, or when every continuation ended (the budget's last step).

Where a batched ``generate`` differs (the engine equals ``generate`` on each problem alone): there a problem
whose C continuations all end before the budget keeps running on dead beams until the batch stops (alone, its
search stops, as here), and a batch shares one ``max_new_tokens`` where each request here has its own budget
(``max_new_tokens_by_source``; the ``generate`` path cuts the rows afterwards).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from egcfg_pl.sampling.engine import ContinuousDecoder, Decoded, Request, StopCheck, _Batch, _Row, prefill_groups

NEG = -1.0e9  # transformers' "never pick this" score, added the same way so the fp32 rounding is the same


@dataclass(frozen=True)
class _Hypothesis:
    token_ids: tuple[int, ...]
    logprob: float  # Σ log p (T = 1) over token_ids
    truncated: bool  # ended by the budget, not by EOS or a stop string


class _Searches:
    """Search state of the problems in the batch, in batch order (problem p owns rows p*K .. p*K + K - 1).

    The tensors are transformers' ``running_beam_scores``, ``beam_scores``, ``is_sent_finished`` and
    ``is_early_stop_heuristic_unsatisfied``, one row per problem. Beams are in score order there (it decides
    ties and the best running beam); a beam's row in the batch is ``slots[p][k]``, so that a beam can stay in its
    parent's row and its cache need not move."""

    def __init__(self, num_beams: int, device: torch.device):
        self.k, self.device = num_beams, device
        self.requests: list[int] = []
        self.steps: list[int] = []  # tokens generated so far by each running beam
        self.hypotheses: list[list[_Hypothesis]] = []  # K per problem, in the order of ``scores``
        self.slots: list[list[int]] = []  # per problem, beam k (score order) -> its row among the problem's K rows
        fp32 = dict(dtype=torch.float32, device=device)
        self.running = torch.empty(0, num_beams, **fp32)  # (P, K) Σ log p of the running beams
        self.scores = torch.empty(0, num_beams, **fp32)  # (P, K) length-penalised scores of the finished ones
        self.finished = torch.empty(0, num_beams, dtype=torch.bool, device=device)  # (P, K) slot holds one
        self.open = torch.empty(0, dtype=torch.bool, device=device)  # (P,) a running beam may still do better

    def __len__(self) -> int:
        return len(self.requests)

    def add(self, requests: list[int]) -> None:
        """New problems: the first beam starts at 0, the others at -1e9 (the prompt's K copies are identical, so
        only the first one's continuations count on the first step)."""
        n, k = len(requests), self.k
        running = torch.full((n, k), NEG, dtype=torch.float32, device=self.device)
        running[:, 0] = 0.0
        self.requests += requests
        self.steps += [0] * n
        self.hypotheses += [[_Hypothesis((), 0.0, True)] * k for _ in requests]  # placeholders, score -1e9
        self.slots += [list(range(k)) for _ in requests]
        self.running = torch.cat([self.running, running])
        self.scores = torch.cat([self.scores, torch.full((n, k), NEG, dtype=torch.float32, device=self.device)])
        self.finished = torch.cat([self.finished, torch.zeros(n, k, dtype=torch.bool, device=self.device)])
        self.open = torch.cat([self.open, torch.ones(n, dtype=torch.bool, device=self.device)])

    def row(self, p: int, beam: int) -> int:
        """Batch row of problem p's beam (score order)."""
        return p * self.k + self.slots[p][beam]

    def keep(self, keep: list[int]) -> None:
        index = torch.tensor(keep, dtype=torch.long, device=self.device)
        self.requests = [self.requests[p] for p in keep]
        self.steps = [self.steps[p] for p in keep]
        self.hypotheses = [self.hypotheses[p] for p in keep]
        self.slots = [self.slots[p] for p in keep]
        self.running, self.scores = self.running[index], self.scores[index]
        self.finished, self.open = self.finished[index], self.open[index]


@dataclass(frozen=True)
class _Continuations:
    """The top C continuations of every problem in the batch, best first: (P, C) each."""

    scores: torch.Tensor  # running score + log p of the token
    parent: list[list[int]]  # beam (0..K-1) continued
    token: list[list[int]]
    logprob: list[list[float]]  # log p of the token
    ended: list[list[bool]]  # EOS or a stop string
    hits: torch.Tensor  # bool: ended or the problem's budget is reached (transformers' stopping criteria)


class BeamDecoder(ContinuousDecoder):
    """Beam search with ``num_beams`` rows per request and at most ``problems`` requests in flight; a request whose
    search is done returns its ``num_return_sequences`` best hypotheses (``Decoded.copy`` = rank, best first),
    with Σ log p under the model (T = 1) and ``truncated`` when the hypothesis ended at the budget.

    ``length_penalty`` and ``early_stopping`` mean what they mean for ``generate``. Same cache requirement as the
    greedy decoder (``NotImplementedError`` from the first prefill otherwise)."""

    def __init__(
        self,
        model,
        eos_ids: Sequence[int],
        pad_id: int,
        problems: int,
        num_beams: int,
        num_return_sequences: int | None = None,
        length_penalty: float = 1.0,
        early_stopping: bool | str = False,
        **kwargs,
    ):
        if num_beams < 1:
            raise ValueError(f"BeamDecoder num_beams must be >= 1, got {num_beams}")
        returned = num_beams if num_return_sequences is None else num_return_sequences
        if not 1 <= returned <= num_beams:
            raise ValueError(f"BeamDecoder num_return_sequences must be in 1..num_beams ({num_beams}), got {returned}")
        super().__init__(model, eos_ids, pad_id, slots=max(1, problems) * num_beams, **kwargs)
        self.k, self.returned = num_beams, returned
        self.length_penalty, self.early_stopping = length_penalty, early_stopping
        self.c = max(2, 1 + len(self.eos_ids)) * num_beams  # continuations kept per step, as transformers

    def _run(self, requests: Sequence[Request], on_done: Callable[[int], None] | None) -> list[Decoded]:
        requests = [dataclasses.replace(r, copies=self.k) for r in requests]
        queue = list(range(len(requests)))
        if self.longest_first:
            queue.sort(key=lambda i: -len(requests[i].prompt))
        done: dict[int, list[Decoded]] = {}
        batch, searches = _Batch(), _Searches(self.k, self.device)
        while queue or len(batch):
            admitted = queue[: (self.slots - len(batch)) // self.k]
            del queue[: len(admitted)]
            widths = [len(requests[i].prompt) for i in admitted]
            for group in prefill_groups(widths, self.prefill_budget):
                self._prefill(batch, requests, [admitted[g] for g in group])
                searches.add([admitted[g] for g in group])
            self._search_step(batch, searches, requests, done, on_done)
            if len(batch):
                self._forward(batch)
        return [d for i in range(len(requests)) for d in done[i]]

    def _search_step(self, batch: _Batch, searches: _Searches, requests, done, on_done) -> None:
        """One step of every problem's search (the letters are the steps of transformers' ``_beam_search``); the
        rows of the problems that go on become their next beams, the others leave the batch."""
        top = self._continuations(batch, searches, requests)
        k, dev = self.k, self.device
        # e. the K best continuations that did not end run on (transformers' _get_running_beams_for_next_iteration)
        running_scores = top.scores + top.hits.to(torch.float32) * NEG
        nxt = running_scores.topk(k, dim=-1).indices  # (P, K)
        running = running_scores.gather(1, nxt)
        # f. finished hypotheses (_update_finished_beams): only the first K of the C may finish
        just = top.hits & (torch.arange(self.c, device=dev) < k)
        lengths = torch.tensor([(s + 1) ** self.length_penalty for s in searches.steps], dtype=torch.float32)
        lengths = lengths.to(dev)
        candidate = top.scores / lengths[:, None]
        full = searches.finished.all(-1, keepdim=True) & (self.early_stopping is True)
        candidate += full.to(torch.float32) * NEG
        candidate += (~searches.open[:, None]).to(torch.float32) * NEG
        candidate += (~just).to(torch.float32) * NEG
        merged = torch.cat([searches.scores, candidate], dim=1)
        pick = merged.topk(k, dim=-1).indices  # (P, K)
        searches.scores = merged.gather(1, pick)
        searches.finished = torch.cat([searches.finished, just], dim=1).gather(1, pick)
        for p, picked in enumerate(pick.tolist()):
            old = searches.hypotheses[p]
            searches.hypotheses[p] = [
                old[j] if j < k else self._hypothesis(batch.rows[searches.row(p, top.parent[p][j - k])], top, p, j - k)
                for j in picked
            ]
        # g. the early-stop heuristic (_check_early_stop_heuristic) after the step
        searches.running = running
        searches.steps = [s + 1 for s in searches.steps]
        searches.open = searches.open & self._may_improve(searches, requests)
        over = ~searches.open | top.hits.all(-1)
        if self.early_stopping is True:
            over |= searches.finished.all(-1)
        self._regroup(batch, searches, requests, top, nxt.tolist(), over.tolist(), done, on_done)

    def _continuations(self, batch: _Batch, searches: _Searches, requests) -> _Continuations:
        """Top C (beam, token) of each problem over the running scores + fp32 log p, and whether each ends."""
        p_count, k = len(searches), self.k
        order = [searches.row(p, b) for p in range(p_count) for b in range(k)]
        logits = batch.logits if order == list(range(len(order))) else batch.logits[order]  # beams in score order
        logprobs = logits.log_softmax(-1)  # (P*K, V) fp32, T = 1
        vocab = logprobs.shape[-1]
        total = (logprobs.view(p_count, k, vocab) + searches.running[:, :, None]).view(p_count, k * vocab)
        scores, index = total.topk(self.c, dim=-1)  # (P, C), best first
        token_lp = logprobs.view(p_count, k * vocab).gather(1, index)
        parent, token = (index // vocab).tolist(), (index % vocab).tolist()
        ended, hits = [], []
        for p in range(p_count):
            request = requests[searches.requests[p]]
            last = searches.steps[p] + 1 >= request.max_new_tokens
            ends = [
                self._ends(batch.rows[searches.row(p, b)], t, request.stop) for b, t in zip(parent[p], token[p])
            ]
            ended.append(ends)
            hits.append([e or last for e in ends])
        hit = torch.tensor(hits, dtype=torch.bool, device=self.device)
        return _Continuations(scores, parent, token, token_lp.tolist(), ended, hit)

    def _ends(self, row: _Row, token: int, stop: StopCheck) -> bool:
        if token in self.eos_ids:
            return True
        row.ids.append(token)  # checked in place: no copy of the row per continuation
        try:
            return stop.hit(row.ids)
        finally:
            row.ids.pop()

    def _may_improve(self, searches: _Searches, requests) -> torch.Tensor:
        """transformers' heuristic: can the best running beam, at its best length, still beat the worst finished
        hypothesis? (Any empty slot counts as beatable.)"""
        if self.early_stopping == "never" and self.length_penalty > 0.0:
            lengths = [requests[r].max_new_tokens for r in searches.requests]
        else:
            lengths = searches.steps
        denominators = torch.tensor([n**self.length_penalty for n in lengths], dtype=torch.float32, device=self.device)
        best = searches.running[:, :1] / denominators[:, None]
        worst = torch.where(searches.finished, searches.scores.min(1, keepdim=True).values, NEG)
        return (best > worst).any(-1)

    @staticmethod
    def _hypothesis(row: _Row, top: _Continuations, p: int, c: int) -> _Hypothesis:
        """Continuation c of problem p as a finished hypothesis (its parent ``row`` plus the token)."""
        logprobs = torch.tensor(row.logprobs + [top.logprob[p][c]], dtype=torch.float64)
        return _Hypothesis(tuple(row.ids) + (top.token[p][c],), float(logprobs.sum()), not top.ended[p][c])

    def _regroup(self, batch, searches, requests, top, nxt, over, done, on_done) -> None:
        """Finished problems return their best hypotheses and leave; the others' rows become their next beams."""
        k = self.k
        source, rows, tokens, keep = [], [], [], []
        for p, (ended, beams) in enumerate(zip(over, nxt)):
            request = searches.requests[p]
            if ended:
                best = searches.hypotheses[p][: self.returned]
                done[request] = [
                    Decoded(request, rank, h.token_ids, h.logprob, h.truncated) for rank, h in enumerate(best)
                ]
                if on_done is not None:
                    on_done(request)
                continue
            keep.append(p)
            parents = [searches.slots[p][top.parent[p][c]] for c in beams]  # rows among the problem's K
            slots = stay_put(parents)
            order = sorted(range(k), key=lambda beam: slots[beam])  # the beams by row
            for beam in order:
                c, parent = beams[beam], batch.rows[p * k + parents[beam]]
                token = top.token[p][c]
                rows.append(_Row(request, beam, parent.ids + [token], parent.logprobs + [top.logprob[p][c]]))
                source.append(p * k + parents[beam])
                tokens.append(token)
            searches.slots[p] = slots
        batch.select(source, rows)
        batch.tokens = torch.tensor(tokens, dtype=torch.long, device=self.device)
        searches.keep(keep)


def stay_put(parents: list[int]) -> list[int]:
    """A row for each beam, given its parent's row: the first beam continuing a row keeps that row (its cache is
    already there), the other beams take the rows nobody continues. ``[0, 0, 2] -> [0, 1, 2]``."""
    rows: list[int | None] = [None] * len(parents)
    taken: set[int] = set()
    for beam, parent in enumerate(parents):
        if parent not in taken:
            rows[beam] = parent
            taken.add(parent)
    free = iter(r for r in range(len(parents)) if r not in taken)
    return [r if r is not None else next(free) for r in rows]
