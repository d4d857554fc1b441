"""Local candidate sampler: batched beam search (BTP step 1), greedy or nucleus sampling with a HF model.

Each candidate's possibility comes from the model itself: ``logprob = Σ_i log p(t_i | X, t_<i)`` over the
generated tokens that were kept (through the EOS or the token that completed a stop string; padding
excluded), i.e. log P(t) with P(t) = Π p(token) as in the paper. It is recomputed by one teacher-forced
forward pass over prompt + kept tokens instead of being read off the search: HF's beam ``sequences_scores``
are divided by length**length_penalty, sampling scores are temperature/top-p warped, and a stop string can
end inside a token, so the search's own scores are not the model's probability of what we keep.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

from egcfg_pl.problems.problem import Problem
from egcfg_pl.prompts import PromptTemplate, build_prompt, extract_program, stop_strings
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sampling.settings import GenerationSettings

LOGITS_BUDGET_BYTES = 256 * 2**20  # cap on the fp32 logits tensor of one rescoring forward pass


@dataclass(frozen=True)
class Generation:
    """One decoded continuation, before program extraction."""

    problem_index: int  # position in the ``problems`` argument
    rank: int  # position among this problem's continuations (0 = best beam / first sample)
    token_ids: tuple[int, ...]  # kept generated tokens (EOS / stop-string token included)
    text: str  # decoded kept tokens, cut before the first stop string
    logprob: float  # Σ log p over token_ids under the model (natural log)


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
        self.window = max((len(s) for s in self.stops), default=0) + 2  # a char is at least one token

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
    ids = list(ids)
    eos_at = next((i for i, t in enumerate(ids) if t in eos_ids), None)
    if eos_at is not None:
        ids = ids[: eos_at + 1]
    stop_at = tracker.first_stop(ids)
    return ids if stop_at is None else ids[:stop_at]


def _pad_rows(prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], pad_id: int):
    """``[left-padded prompt | right-padded continuation]`` ids, attention mask and position ids."""
    p_len = max(len(p) for p in prompts)
    g_len = max(len(c) for c in continuations)
    ids, mask = [], []
    for p, c in zip(prompts, continuations):
        left, right = p_len - len(p), g_len - len(c)
        ids.append([pad_id] * left + list(p) + list(c) + [pad_id] * right)
        mask.append([0] * left + [1] * (len(p) + len(c)) + [0] * right)
    ids_t, mask_t = torch.tensor(ids), torch.tensor(mask)
    positions = (mask_t.cumsum(-1) - 1).clamp(min=0)  # left padding must not shift positions
    return ids_t, mask_t, positions, g_len


def _vocab_size(model) -> int:
    return model.get_output_embeddings().weight.shape[0]


@torch.no_grad()
def sequence_logprobs(
    model, prompts: Sequence[Sequence[int]], continuations: Sequence[Sequence[int]], pad_id: int
) -> list[float]:
    """Σ log p(continuation token | prompt, earlier tokens) per row, by teacher forcing (natural log).

    Rows are processed in chunks so the fp32 logits stay under ``LOGITS_BUDGET_BYTES``; only the logits of
    the continuation positions are materialised (``logits_to_keep``).
    """
    device = next(model.parameters()).device
    g_max = max(len(c) for c in continuations)
    per_row = (g_max + 1) * _vocab_size(model) * 4 * 2  # logits + log_softmax
    chunk = max(1, LOGITS_BUDGET_BYTES // per_row)
    out: list[float] = []
    for start in range(0, len(prompts), chunk):
        ids, mask, pos, g_len = _pad_rows(prompts[start : start + chunk], continuations[start : start + chunk], pad_id)
        ids, mask, pos = ids.to(device), mask.to(device), pos.to(device)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=pos, logits_to_keep=g_len + 1, use_cache=False).logits
        logits = logits[:, :-1].float()  # (rows, g_len, vocab): position P-1+j predicts continuation token j
        targets = ids[:, -g_len:]  # (rows, g_len)
        token_lp = logits.log_softmax(-1).gather(-1, targets[..., None]).squeeze(-1)
        out += (token_lp * mask[:, -g_len:]).sum(-1).tolist()
    return out


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
            length_penalty=1.0,
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

    ``sample`` batches problems (left padding, length buckets), decodes with ``settings.strategy``, cuts each
    continuation at EOS / the first stop string, and scores the kept tokens by teacher forcing. The model
    runs in eval mode under ``torch.no_grad`` and gets its previous train/eval mode back afterwards.
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

    def sample(self, problems: Sequence[Problem], *, iteration: int = 0) -> list[Candidate]:
        """Candidates grouped by problem in input order, best first within a problem."""
        generations = self.generate(problems, iteration=iteration)
        return [self._candidate(problems[g.problem_index], g, iteration) for g in generations]

    def generate(self, problems: Sequence[Problem], *, iteration: int = 0) -> list[Generation]:
        """The raw continuations (with token ids) behind ``sample``, in the same order."""
        self.last_stats = SamplingStats(problems=len(problems))
        if not problems:
            return []
        prompts = [encode_prompt(self.tokenizer, build_prompt(p, self.tokenizer, self.template)) for p in problems]
        batches = length_buckets([len(p) for p in prompts], self.settings.batch_size, self.settings.length_buckets)
        results: dict[int, list[Generation]] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad(), self._rng(iteration), tqdm(
                total=len(problems), desc=f"sampling {self.name}", unit="problem", disable=not self.settings.progress
            ) as bar:
                for batch in batches:
                    batch_problems = [problems[i] for i in batch]
                    for index, gens in zip(batch, self._generate_batch(batch, batch_problems, [prompts[i] for i in batch])):
                        results[index] = gens
                    bar.update(len(batch))
        finally:
            self.model.train(was_training)
        ordered = [g for i in range(len(problems)) for g in results[i]]
        self.last_stats.candidates = len(ordered)
        self.last_stats.generated_tokens = sum(len(g.token_ids) for g in ordered)
        return ordered

    def _rng(self, iteration: int):
        """``sample`` reseeds torch with seed + iteration; the RNG is forked so training randomness is untouched."""
        seed = self.settings.seed + iteration if self.settings.strategy == "sample" else None
        return seeded(seed, next(self.model.parameters()).device)

    def tracker(self, problem: Problem) -> StopStringTracker:
        """Stop strings of one problem: ``settings.stop_strings`` or the template's (they depend on the problem)."""
        stops = self.settings.stop_strings
        return StopStringTracker(self.tokenizer, stop_strings(self.template, problem) if stops is None else stops)

    def _generate_batch(
        self, indices: list[int], problems: list[Problem], prompts: list[list[int]]
    ) -> list[list[Generation]]:
        device = next(self.model.parameters()).device
        p_len = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad_id] * (p_len - len(p)) + p for p in prompts], device=device)
        mask = torch.tensor([[0] * (p_len - len(p)) + [1] * len(p) for p in prompts], device=device)
        trackers = [self.tracker(p) for p in problems]
        start = time.perf_counter()
        out = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=generation_config(self.settings, self.pad_id, self.eos_ids),
            stopping_criteria=StoppingCriteriaList([StopOnStrings(trackers, p_len)]),
        )
        self.last_stats.generate_seconds += time.perf_counter() - start
        per = self.settings.candidates_per_problem  # rows come grouped by problem, best beam first
        rows = out[:, p_len:].tolist()
        kept = [cut_generation(row, set(self.eos_ids), trackers[r // per]) for r, row in enumerate(rows)]
        start = time.perf_counter()
        row_prompts = [prompts[r // per] for r in range(len(kept))]
        logprobs = sequence_logprobs(self.model, row_prompts, kept, self.pad_id)
        self.last_stats.rescore_seconds += time.perf_counter() - start
        return [
            [
                self._generation(indices[b], rank, kept[b * per + rank], logprobs[b * per + rank], trackers[b])
                for rank in range(per)
            ]
            for b in range(len(indices))
        ]

    @staticmethod
    def _generation(index: int, rank: int, ids: list[int], logprob: float, tracker: StopStringTracker) -> Generation:
        text = tracker.cut_text(tracker.decode(ids))
        return Generation(problem_index=index, rank=rank, token_ids=tuple(ids), text=text, logprob=logprob)

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
        )


LocalSampler = HFSampler
BeamSampler = HFSampler
