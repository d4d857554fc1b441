"""Local candidate sampler: batched beam search (BTP step 1), greedy or nucleus sampling with a HF model.

Each candidate's possibility comes from the model itself: ``logprob = Σ_i log p(t_i | X, t_<i)`` over the
generated tokens that were kept (through the EOS or the token that completed a stop string; padding
excluded), i.e. log P(t) with P(t) = Π p(token) as in the paper (stored once, never length-normalised).

Greedy and nucleus sampling run on the continuous-batching engine (``engine.ContinuousDecoder``), beam search
on its beam variant (``beam_engine.BeamDecoder``, transformers' beam search per problem); both read each kept
token's log p (T = 1, unwarped) off the logits they decode from. The reference path (``continuous: false``, or a
model whose cache the engine cannot re-lay out) runs ``model.generate`` per batch: beam search records its
log-probs during the search (``beam_scores``), sampling recomputes them by teacher forcing over prompt + kept
tokens (``sequence_logprobs``): HF's beam ``sequences_scores`` are divided by length**length_penalty, sampling
scores are temperature/top-p warped, and a stop string can end inside a token, so the search's own scores are
not the model's probability of what we keep. Keeping the search's per-step scores instead would hold steps x
rows x vocab floats (~1 GB for beam 5 x 8 problems x 128 tokens with a 49k vocabulary).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from egcfg_pl.problems.problem import Problem
from egcfg_pl.prompts import PromptTemplate, build_prompt, extract_program, stop_strings
from egcfg_pl.sampling.base import derive_seed
from egcfg_pl.sampling.beam_engine import BeamDecoder
from egcfg_pl.sampling.beam_scores import BeamLogprobRecorder
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sampling.engine import CACHE_FIELD, ContinuousDecoder, Picker, Request, attention
from egcfg_pl.sampling.grouped_attention import cpu_attention
from egcfg_pl.sampling.merged_lora import merged_lora
from egcfg_pl.sampling.settings import GenerationSettings

LOGITS_BUDGET_BYTES = 256 * 2**20  # cap on the fp32 logits of one rescoring forward pass
RESCORE_ROWS = 64  # rows re-scored together (the KV cache of these rows is held at once, as in generation)
BEAM_LENGTH_PENALTY = 1.0  # transformers' default, on both beam paths (the engine's and ``generate``'s)


@dataclass(frozen=True)
class Generation:
    """One decoded continuation, before program extraction."""

    problem_index: int  # position in the ``problems`` argument
    rank: int  # position among this problem's continuations (0 = best beam / first sample)
    token_ids: tuple[int, ...]  # kept generated tokens (EOS / stop-string token included)
    text: str  # decoded kept tokens, cut before the first stop string
    logprob: float  # Σ log p over token_ids under the model (natural log)
    truncated: bool = False  # ran out of max_new_tokens before EOS or a stop string


@dataclass
class SamplingStats:
    """Throughput of one ``sample`` call; ``generated_tokens`` counts the kept tokens of returned candidates."""

    problems: int = 0
    candidates: int = 0
    generated_tokens: int = 0
    generate_seconds: float = 0.0
    rescore_seconds: float = 0.0

    @property
    def seconds(self) -> float:
        return self.generate_seconds + self.rescore_seconds

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.seconds if self.seconds > 0 else 0.0


def encode_prompt(tokenizer, prompt: str) -> list[int]:
    """Token ids of a prompt; special tokens are added unless the text already starts with BOS (chat templates)."""
    bos = tokenizer.bos_token
    add_special = not (bos and prompt.startswith(bos))
    return tokenizer(prompt, add_special_tokens=add_special)["input_ids"]


def length_buckets(lengths: Sequence[int], batch_size: int, enabled: bool = True) -> list[list[int]]:
    """Batches of indices; with ``enabled`` neighbours in length (longest first) share a batch."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i]) if enabled else list(range(len(lengths)))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


class StopStringTracker:
    """Finds where a stop string completes; shared by the live stopping criterion and the final cut.

    A continuation stops at the first generated prefix ``ids[:k]`` whose last ``window`` tokens decode to
    text containing a stop string. Only generated tokens are decoded, so a prompt ending in ``\\n`` cannot
    trigger a ``\\ndef`` stop.
    """

    def __init__(self, tokenizer, stops: Sequence[str]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        # every token decodes to >= 1 character, so L stop characters lie within the last L + 1 tokens
        self.window = max((len(s) for s in self.stops), default=0) + 2

    def hit(self, ids: Sequence[int]) -> bool:
        if not self.stops or not len(ids):
            return False
        tail = self.tokenizer.decode(ids[-self.window :], skip_special_tokens=True)
        return any(s in tail for s in self.stops)

    def first_stop(self, ids: Sequence[int]) -> int | None:
        """Smallest k such that ``ids[:k]`` hits a stop string, or None."""
        if not self.stops or not any(s in self.decode(ids) for s in self.stops):
            return None
        return next((k for k in range(1, len(ids) + 1) if self.hit(ids[:k])), None)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def cut_text(self, text: str) -> str:
        """Text before the first stop string (the stop string is not part of the program)."""
        starts = [text.find(s) for s in self.stops if s in text]
        return text[: min(starts)] if starts else text


class StopOnStrings(StoppingCriteria):
    """Per-row stopping criterion for ``generate``: a row is done once its generated text hits a stop string.

    ``trackers`` has one entry per problem of the batch; ``generate`` passes rows grouped by problem (beam
    search passes 2·num_beams candidate rows per problem, sampling num_return_sequences).
    """

    def __init__(self, trackers: Sequence[StopStringTracker], prompt_length: int):
        self.trackers = list(trackers)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        per_problem = input_ids.shape[0] // len(self.trackers)
        generated = input_ids[:, self.prompt_length :].tolist()
        done = [self.trackers[r // per_problem].hit(row) for r, row in enumerate(generated)]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def cut_generation(ids: Sequence[int], eos_ids: set[int], tracker: StopStringTracker) -> list[int]:
    """Kept tokens: through the first EOS, then through the token completing the first stop string."""
    return cut_and_finish(ids, eos_ids, tracker)[0]


def cut_and_finish(ids: Sequence[int], eos_ids: set[int], tracker: StopStringTracker) -> tuple[list[int], bool]:
    """``(kept tokens, finished)``: ``finished`` is False when neither EOS nor a stop string ended the row, i.e.
    generation ran to ``max_new_tokens`` (a row only stops early through EOS or a stop string)."""
    ids = list(ids)
    eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    if eos_at is not None:
        ids = ids[: eos_at + 1]
    stop_at = tracker.first_stop(ids)
    return (ids if stop_at is None else ids[:stop_at]), (eos_at is not None or stop_at is not None)


def pad(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, attention_mask)`` of ``rows`` padded to one length on the left or the right."""
    width = max(len(r) for r in rows)
    fill = [[pad_id] * (width - len(r)) for r in rows]
    ids = [f + list(r) if left else list(r) + f for f, r in zip(fill, rows)]
    mask = [[0] * len(f) + [1] * len(r) if left else [1] * len(r) + [0] * len(f) for f, r in zip(fill, rows)]
    return torch.tensor(ids), torch.tensor(mask)


def _shared_prompts(prompts: Sequence[Sequence[int]]) -> tuple[list[Sequence[int]], list[int]]:
    """Distinct consecutive prompts and, per row, the index of its prompt (the beams of a problem share one)."""
    unique: list[Sequence[int]] = []
    owner: list[int] = []
    for p in prompts:
        if not unique or list(unique[-1]) != list(p):
            unique.append(p)
        owner.append(len(unique) - 1)
    return unique, owner


@torch.no_grad()
def sequence_logprobs(
    model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], pad_id: int
) -> list[float]:
    """Σ_j log p(c_j | prompt, c_<j) per row by teacher forcing (natural log); prompts must be non-empty.

    Consecutive rows with the same prompt (the beams of one problem) share one prompt pass, whose KV
    cache is copied to each row; the continuations then run through the cache in position slices so that
    the fp32 logits stay under ``LOGITS_BUDGET_BYTES`` whatever the length.
    """
    scores: list[float] = []
    for start in range(0, len(prompts), RESCORE_ROWS):
        rows = slice(start, start + RESCORE_ROWS)
        scores += _score_rows(model, prompts[rows], continuations[rows], pad_id)
    return scores


def _score_rows(model, prompts, continuations, pad_id: int) -> list[float]:
    device = next(model.parameters()).device
    unique, owner_list = _shared_prompts(prompts)
    owner = torch.tensor(owner_list, device=device)
    p_ids, p_mask = (t.to(device) for t in pad(unique, pad_id, left=True))  # (U, P)
    p_pos = (p_mask.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
    out = model(input_ids=p_ids, attention_mask=p_mask, position_ids=p_pos, use_cache=True, logits_to_keep=1)
    cache = getattr(out, CACHE_FIELD)
    cache.reorder_cache(owner)  # (U, ...) -> (rows, ...): each row gets its prompt's keys/values
    prev = out.logits[owner, -1].float()  # (rows, vocab): predicts continuation token 0
    g_ids, g_mask = (t.to(device) for t in pad(continuations, pad_id, left=False))  # (rows, G)
    mask, first_pos = p_mask[owner], p_pos[owner, -1:] + 1  # (rows, P), (rows, 1)
    step = max(1, LOGITS_BUDGET_BYTES // (len(prompts) * prev.shape[-1] * 16))  # logits, copies, log_softmax
    total = torch.zeros(len(prompts), dtype=torch.float64, device=device)  # whatever the default dtype
    for j0 in range(0, g_ids.shape[1], step):
        ids, keep = g_ids[:, j0 : j0 + step], g_mask[:, j0 : j0 + step]  # (rows, S)
        mask = torch.cat([mask, keep], dim=1)
        pos = first_pos + torch.arange(j0, j0 + ids.shape[1], device=device)
        step_out = model(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **{CACHE_FIELD: cache})
        logits = step_out.logits.float()  # (rows, S, vocab): output at token j predicts token j + 1
        pred = torch.cat([prev[:, None], logits[:, :-1]], dim=1)  # (rows, S, vocab): predicts tokens j0..j0+S-1
        token_lp = pred.log_softmax(-1).gather(-1, ids[..., None]).squeeze(-1)
        total += (token_lp * keep).sum(-1)
        prev = logits[:, -1]
    return total.tolist()


def generation_config(settings: GenerationSettings, pad_id: int, eos_ids: list[int]) -> GenerationConfig:
    """Explicit decoding settings; neutral values override any repetition penalty etc. in the model's config."""
    common = dict(
        max_new_tokens=settings.max_new_tokens,
        pad_token_id=pad_id,
        eos_token_id=eos_ids,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    if settings.strategy == "beam":
        return GenerationConfig(
            **common,
            do_sample=False,
            num_beams=settings.num_beams,
            num_return_sequences=settings.num_return_sequences,
            length_penalty=BEAM_LENGTH_PENALTY,
            early_stopping=False,  # BeamDecoder's default too
        )
    if settings.strategy == "greedy":
        return GenerationConfig(**common, do_sample=False, num_beams=1, num_return_sequences=1)
    return GenerationConfig(
        **common,
        do_sample=True,
        num_beams=1,
        num_return_sequences=settings.num_return_sequences,
        temperature=settings.temperature,
        top_p=settings.top_p,
        top_k=0,  # no hidden top-50 cut
    )


@contextmanager
def seeded(seed: int | None, device: torch.device) -> Iterator[None]:
    """Run a block on a forked torch RNG (reseeded when ``seed`` is given); the caller's RNG state is restored."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if seed is not None:
            torch.manual_seed(seed)
        yield


def eos_token_ids(model, tokenizer) -> list[int]:
    """EOS ids from the tokenizer and the model's generation config (chat models often have two)."""
    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids |= set(configured if isinstance(configured, list) else [configured] if configured is not None else [])
    if not ids:
        raise ValueError("neither the tokenizer nor the model's generation config defines an EOS token")
    return sorted(ids)


class HFSampler:
    """Samples candidate programs from a local HF causal LM (a PeftModel works: the LoRA weights are used).

    ``sample`` decodes with ``settings.strategy`` and cuts each continuation at EOS / the first stop string
    (or its dataset's token budget, ``truncated``). Every strategy runs on the continuous-batching engine, which
    reads the log-probs off its own logits (``settings.continuous``); the reference path runs ``model.generate``
    per batch of problems (left padding, length buckets), beam search recording its log-probs during the search
    (``beam_scores``), teacher forcing for anything unrecorded. Decoding uses ``settings.attention`` (eager on
    CPU). The model runs in eval mode under ``torch.no_grad`` and gets its previous train/eval mode back
    afterwards; a LoRA adapter is folded into the base weights while it runs (``settings.merge_lora``, see
    ``merged_lora``).
    """

    def __init__(
        self,
        model,
        tokenizer,
        settings: GenerationSettings | None = None,
        template: PromptTemplate | None = None,
        name: str = "",
    ):
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings or GenerationSettings()
        self.settings.validate()
        self.template = template or PromptTemplate()
        self.name = name or getattr(getattr(model, "config", None), "_name_or_path", "") or "local"
        self.last_stats = SamplingStats()
        self.eos_ids = eos_token_ids(model, tokenizer)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_ids[0]

    def sample(
        self, problems: Sequence[Problem], *, iteration: int = 0, stream: Sequence[int] = ()
    ) -> list[Candidate]:
        """Candidates grouped by problem in input order, best first within a problem."""
        generations = self.generate(problems, iteration=iteration, stream=stream)
        return [self._candidate(problems[g.problem_index], g, iteration) for g in generations]

    def generate(
        self, problems: Sequence[Problem], *, iteration: int = 0, stream: Sequence[int] = ()
    ) -> list[Generation]:
        """The raw continuations (with token ids) behind ``sample``, in the same order."""
        self.last_stats = SamplingStats(problems=len(problems))
        if not problems:
            return []
        prompts = [encode_prompt(self.tokenizer, build_prompt(p, self.tokenizer, self.template)) for p in problems]
        batches = length_buckets([len(p) for p in prompts], self.settings.batch_size, self.settings.length_buckets)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), merged_lora(self.model, self.settings.merge_lora), self._rng(
                iteration, stream
            ), attention(self.model, self._attention()), tqdm(
                total=len(problems), desc=f"sampling {self.name}", unit="problem", disable=not self.settings.progress
            ) as bar:
                results = self._decode_continuous(problems, prompts, bar) if self._continuous() else {}
                for batch in batches if not results else []:
                    gens = self._generate_batch(batch, [problems[i] for i in batch], [prompts[i] for i in batch])
                    results.update(zip(batch, gens))
                    bar.update(len(batch))
        finally:
            self.model.train(was_training)
        ordered = [g for i in range(len(problems)) for g in results[i]]
        self.last_stats.candidates = len(ordered)
        self.last_stats.generated_tokens = sum(len(g.token_ids) for g in ordered)
        return ordered

    def _attention(self) -> str | None:
        """``settings.attention`` resolved: ``auto`` is eager on CPU (its grouped-query form where the model has one,
        ``grouped_attention``), the model's own implementation elsewhere."""
        if self.settings.attention != "auto":
            return self.settings.attention
        return cpu_attention(self.model) if next(self.model.parameters()).device.type == "cpu" else None

    def _continuous(self) -> bool:
        return self.settings.continuous

    def _decode_continuous(
        self, problems: Sequence[Problem], prompts: list[list[int]], bar
    ) -> dict[int, list[Generation]]:
        """Every strategy on the continuous-batching engine (beam search: ``beam_engine.BeamDecoder``); {} when the
        model's cache is not one it can re-lay out (the caller then takes the ``generate`` path)."""
        s = self.settings
        per = 1 if s.strategy == "beam" else s.candidates_per_problem  # beam rows are the decoder's own
        trackers = [self.tracker(p) for p in problems]
        requests = [
            Request(tuple(prompt), tracker, s.budget(p.source), per)
            for p, prompt, tracker in zip(problems, prompts, trackers)
        ]
        if s.strategy == "beam":
            decoder = BeamDecoder(
                self.model, self.eos_ids, self.pad_id, s.batch_size, s.num_beams, s.num_return_sequences,
                length_penalty=BEAM_LENGTH_PENALTY, attention=None,
            )
        else:
            picker = Picker() if s.strategy == "greedy" else Picker(s.temperature, s.top_p)
            rows = s.batch_size * per
            decoder = ContinuousDecoder(self.model, self.eos_ids, self.pad_id, rows, picker, attention=None)
        start = time.perf_counter()
        try:
            decoded = decoder.run(requests, on_done=lambda i: bar.update(1))
        except NotImplementedError:
            return {}
        self.last_stats.generate_seconds += time.perf_counter() - start
        results: dict[int, list[Generation]] = {i: [] for i in range(len(problems))}
        for d in decoded:
            results[d.request].append(
                self._generation(d.request, d.copy, list(d.token_ids), d.logprob, trackers[d.request], d.truncated)
            )
        return results

    def _rng(self, iteration: int, stream: Sequence[int] = ()):
        """``sample`` reseeds torch from (seed, iteration, *stream) (``derive_seed``); the RNG is forked so training
        randomness is untouched."""
        seed = derive_seed(self.settings.seed, iteration, *stream) if self.settings.strategy == "sample" else None
        return seeded(seed, next(self.model.parameters()).device)

    def tracker(self, problem: Problem) -> StopStringTracker:
        """Stop strings of one problem: ``settings.stop_strings`` or the template's (they depend on the problem)."""
        stops = self.settings.stop_strings
        return StopStringTracker(self.tokenizer, stop_strings(self.template, problem) if stops is None else stops)

    def _generate_batch(
        self, indices: list[int], problems: list[Problem], prompts: list[list[int]]
    ) -> list[list[Generation]]:
        device = next(self.model.parameters()).device
        ids, mask = (t.to(device) for t in pad(prompts, self.pad_id, left=True))  # (batch, P)
        p_len = ids.shape[1]
        trackers = [self.tracker(p) for p in problems]
        budgets = [self.settings.budget(p.source) for p in problems]
        config = generation_config(self.settings, self.pad_id, self.eos_ids)
        config.max_new_tokens = max(budgets)
        recorder = self._beam_recorder()
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=config,
            stopping_criteria=StoppingCriteriaList([StopOnStrings(trackers, p_len)]),
            logits_processor=LogitsProcessorList([recorder] if recorder else []),
        )
        self.last_stats.generate_seconds += time.perf_counter() - start
        per = self.settings.candidates_per_problem  # rows come grouped by problem, best beam first
        rows = out[:, p_len:].tolist()
        eos = set(self.eos_ids)
        cut = [cut_and_finish(row[: budgets[r // per]], eos, trackers[r // per]) for r, row in enumerate(rows)]
        kept = [ids for ids, _ in cut]
        truncated = [not finished for _, finished in cut]
        start = time.perf_counter()
        logprobs = self._logprobs(prompts, kept, per, recorder)
        self.last_stats.rescore_seconds += time.perf_counter() - start
        return [
            [
                self._generation(
                    indices[b], rank, kept[b * per + rank], logprobs[b * per + rank], trackers[b], truncated[b * per + rank]
                )
                for rank in range(per)
            ]
            for b in range(len(indices))
        ]

    def _beam_recorder(self) -> BeamLogprobRecorder | None:
        """Beam search records its own exact log-probs (``beam_scores``); HF keeps max(2, 1 + n_eos) x num_beams
        continuations per step, and so does the recorder."""
        if self.settings.strategy != "beam":
            return None
        return BeamLogprobRecorder(max(2, 1 + len(self.eos_ids)) * self.settings.num_beams, self.settings.num_beams)

    def _logprobs(self, prompts, kept, per: int, recorder: BeamLogprobRecorder | None) -> list[float]:
        """Recorded beam log-probs where the search saw every kept token; teacher forcing for the rest."""
        recorded = [recorder.logprob(r // per, row) if recorder else None for r, row in enumerate(kept)]
        missing = [r for r, lp in enumerate(recorded) if lp is None]
        if missing:
            row_prompts = [prompts[r // per] for r in missing]
            rescored = sequence_logprobs(self.model, row_prompts, [kept[r] for r in missing], self.pad_id)
            for r, lp in zip(missing, rescored):
                recorded[r] = lp
        return recorded

    @staticmethod
    def _generation(
        index: int, rank: int, ids: list[int], logprob: float, tracker: StopStringTracker, truncated: bool = False
    ) -> Generation:
        text = tracker.cut_text(tracker.decode(ids))
        return Generation(
            problem_index=index, rank=rank, token_ids=tuple(ids), text=text, logprob=logprob, truncated=truncated
        )

    def _candidate(self, problem: Problem, g: Generation, iteration: int) -> Candidate:
        return Candidate(
            problem_id=problem.id,
            program=extract_program(g.text, problem, self.template),
            text=g.text,
            logprob=g.logprob,
            num_tokens=len(g.token_ids),
            source=self.name,
            iteration=iteration,
            rank=g.rank,
            truncated=g.truncated,
        )
