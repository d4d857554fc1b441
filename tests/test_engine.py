"""The continuous-batching engine: same greedy tokens as ``model.generate``, log-probs equal a forward pass,
finished rows leave the batch (a rambling row does not hold the others), per-dataset budgets, top-p."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from egcfg_pl.models import ModelSpec, load_model, load_tokenizer
from egcfg_pl.prompts import PromptTemplate, build_prompt
from egcfg_pl.sampling.beam import HFSampler, encode_prompt
from egcfg_pl.sampling.engine import ContinuousDecoder, Decoded, Picker, Request
from egcfg_pl.sampling.settings import GenerationSettings
from tests.test_beam import assert_matches_forward, make_problem, settings

TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    """The tiny random Llama with its attention projections scaled x8: at the default init attention is nearly
    uniform, so a cache laid out wrongly (a key shifted by one position) moved log-probs by < 1e-3 and passed;
    sharpened, the same bug moves them by > 1 nat and flips greedy tokens."""
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")
    model = load_model(spec)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "v_proj", "o_proj")):
                param.mul_(8.0)
    return model, load_tokenizer(spec)


@pytest.fixture(scope="module")
def mixed():
    """Prompts of different lengths from two datasets, so budgets differ and rows leave at different steps."""
    out = []
    for i, words in enumerate([1, 9, 4, 12, 2, 6]):
        p = make_problem(i, words)
        out.append(dataclasses.replace(p, source="mbpp") if i % 2 else p)
    return out


class NoStop:
    def hit(self, ids) -> bool:
        return False


def count_rows(model):
    """Forward-hook counter of the (row, position) pairs the model runs, prompt padding aside: the work a decoder
    pays for."""
    seen = {"row_tokens": 0, "calls": 0}

    def hook(module, args, kwargs):
        ids, mask = kwargs["input_ids"], kwargs["attention_mask"]
        seen["row_tokens"] += int(mask[:, -ids.shape[1] :].sum())
        seen["calls"] += 1

    return seen, model.register_forward_pre_hook(hook, with_kwargs=True)


def test_greedy_equals_generate_path_token_for_token(tiny, mixed):
    model, tok = tiny
    budgets = dict(max_new_tokens=12, max_new_tokens_by_source={"mbpp": 4})
    fast = HFSampler(model, tok, settings(strategy="greedy", batch_size=2, **budgets)).generate(mixed)
    slow = HFSampler(model, tok, settings(strategy="greedy", batch_size=2, continuous=False, **budgets)).generate(mixed)
    assert [(g.problem_index, g.rank) for g in fast] == [(i, 0) for i in range(len(mixed))]
    assert [g.token_ids for g in fast] == [g.token_ids for g in slow]
    assert [len(g.token_ids) for g in fast] == [4 if p.source == "mbpp" else 12 for p in mixed]
    assert [g.logprob for g in fast] == pytest.approx([g.logprob for g in slow], abs=TOL)
    assert all(g.truncated for g in fast) and all(g.truncated for g in slow)  # budget ran out, no EOS / stop
    assert_matches_forward(model, tok, mixed, fast)


def test_finished_rows_leave_and_no_rescore_pass(tiny, mixed):
    """Work = the kept tokens (+ prompts), not batch x longest row; the old path ran every row to the budget
    and then a teacher-forced pass over the kept tokens."""
    model, tok = tiny
    s = settings(strategy="greedy", batch_size=3, max_new_tokens=12, max_new_tokens_by_source={"mbpp": 2})
    prompts = sum(len(encode_prompt(tok, build_prompt(p, tok, PromptTemplate()))) for p in mixed)
    seen, handle = count_rows(model)
    try:
        gens = HFSampler(model, tok, s).generate(mixed)
    finally:
        handle.remove()
    kept = sum(len(g.token_ids) for g in gens)
    assert kept == 3 * 12 + 3 * 2
    # prefill + one decode step per kept token but the last of each row
    assert seen["row_tokens"] <= prompts + kept
    assert seen["calls"] <= 12 + 2 * 3 + len(mixed)


def test_stop_string_and_eos_end_a_row_untruncated(tiny, mixed):
    model, tok = tiny
    p = encode_prompt(tok, build_prompt(mixed[0], tok, PromptTemplate()))
    picker = Picker(temperature=1.0)  # a seeded draw: varied tokens, the same on each run

    def run(eos: int, stop) -> Decoded:
        torch.manual_seed(0)
        return ContinuousDecoder(model, [eos], 0, slots=1, picker=picker).run([Request(tuple(p), stop, 8)])[0]

    free = run(10**9, NoStop())
    k = next(k for k in range(1, 8) if free.token_ids[k] not in free.token_ids[:k])  # a token new at step k
    eos = free.token_ids[k]
    ended = run(eos, NoStop())
    assert ended.token_ids == free.token_ids[: k + 1] and not ended.truncated and free.truncated

    class StopAt:
        def hit(self, ids) -> bool:
            return len(ids) >= 2

    stopped = run(10**9, StopAt())
    assert stopped.token_ids == free.token_ids[:2] and not stopped.truncated
    assert stopped.logprob > free.logprob  # the sum runs over the kept tokens only


def test_samples_share_a_prompt_and_are_seeded(tiny, mixed):
    model, tok = tiny
    s = settings(strategy="sample", num_return_sequences=3, num_beams=1, batch_size=2, seed=5, max_new_tokens=6)
    sampler = HFSampler(model, tok, s)
    first = sampler.generate(mixed[:3], iteration=2, stream=(0, 1))
    again = sampler.generate(mixed[:3], iteration=2, stream=(0, 1))
    assert [(g.problem_index, g.rank) for g in first] == [(i, r) for i in range(3) for r in range(3)]
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert len({g.token_ids for g in first if g.problem_index == 0}) > 1  # copies are drawn independently
    other = sampler.generate(mixed[:3], iteration=2, stream=(1, 1))
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    assert_matches_forward(model, tok, mixed, first)  # T = 1 log p, not the warped one


@pytest.mark.parametrize("top_p", [0.3, 0.9, 1.0])
def test_top_p_keeps_the_set_transformers_keeps(top_p):
    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    expected = TopPLogitsWarper(top_p)(None, logits.clone()) > float("-inf")
    torch.manual_seed(1)
    draws = torch.stack([Picker(temperature=1.0, top_p=top_p)(logits) for _ in range(300)], 1)
    allowed = torch.zeros_like(expected)
    allowed.scatter_(1, draws, True)
    assert not (allowed & ~expected).any()  # never draws outside the nucleus


def test_budget_by_source_validated():
    assert GenerationSettings(max_new_tokens_by_source={"mbpp": 5}).budget("mbpp") == 5
    assert GenerationSettings(max_new_tokens=7).budget("humaneval") == 7
    with pytest.raises(ValueError, match="max_new_tokens_by_source"):
        GenerationSettings(max_new_tokens_by_source={"mbpp": 0})


@pytest.mark.parametrize(
    ("strategy", "choice", "expected"),
    [("greedy", "auto", "egcfg_grouped"), ("beam", "auto", "egcfg_grouped"), ("greedy", None, "sdpa")],
)
def test_decoding_attention_is_set_and_restored(tiny, mixed, strategy, choice, expected):
    model, tok = tiny
    before = model.config._attn_implementation
    assert before == "sdpa"
    seen = []
    handle = model.register_forward_pre_hook(lambda m, a: seen.append(m.config._attn_implementation))
    s = settings(strategy=strategy, num_beams=2, num_return_sequences=2, max_new_tokens=2, attention=choice)
    try:
        HFSampler(model, tok, s).generate(mixed[:1])
    finally:
        handle.remove()
    assert set(seen) == {expected} and model.config._attn_implementation == before


def test_beam_logprobs_recorded_by_the_search_without_rescore(tiny, mixed, monkeypatch):
    """The ``generate`` beam path (``continuous: false``) records its log-probs during the search."""
    import egcfg_pl.sampling.beam as beam

    model, tok = tiny
    s = settings(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=6, batch_size=2, continuous=False)
    reference = HFSampler(model, tok, s).generate(mixed[:3])

    def no_rescore(*args, **kwargs):
        raise AssertionError("beam candidates were re-scored by teacher forcing")

    monkeypatch.setattr(beam, "sequence_logprobs", no_rescore)
    gens = HFSampler(model, tok, s).generate(mixed[:3])
    assert [g.token_ids for g in gens] == [g.token_ids for g in reference]
    assert_matches_forward(model, tok, mixed, gens)


def test_a_longer_prompt_joins_a_narrower_running_batch(tiny, mixed):
    """Admitted in request order (shortest first), a new prompt is wider than the running cache: the running
    rows are padded on the left; every row still decodes as if alone."""
    model, tok = tiny
    order = sorted(mixed, key=lambda p: len(p.statement))
    prompts = [tuple(encode_prompt(tok, build_prompt(p, tok, PromptTemplate()))) for p in order]
    assert list(prompts) == sorted(prompts, key=len) and len(prompts[0]) < len(prompts[-1])
    requests = [Request(p, NoStop(), 2 + 3 * (i % 3)) for i, p in enumerate(prompts)]
    decoder = ContinuousDecoder(model, [10**9], 0, slots=2, longest_first=False)
    decoded = decoder.run(requests)
    for d, prompt, r in zip(decoded, prompts, requests):
        assert len(d.token_ids) == r.max_new_tokens and d.truncated
        ids = torch.tensor([list(prompt) + list(d.token_ids)])
        with torch.no_grad():
            logp = model(ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
        assert logp.argmax(-1).tolist() == list(d.token_ids)
        assert d.logprob == pytest.approx(logp.gather(-1, ids[0, len(prompt) :, None]).sum().item(), abs=TOL)


def test_prefill_groups_bound_rows_times_width_squared():
    from egcfg_pl.sampling.engine import prefill_groups

    assert prefill_groups([10, 10, 10, 10], budget=400) == [[0, 1, 2, 3]]
    assert prefill_groups([10, 10, 10, 10], budget=200) == [[0, 1], [2, 3]]
    assert prefill_groups([3000, 20, 20], budget=2**20) == [[0], [1, 2]]  # a single row over the budget still runs
    assert prefill_groups([], budget=10) == []


def test_a_small_prefill_budget_splits_the_prefill_and_decodes_the_same(tiny, mixed):
    """Long prompts prefilled 32 at once took the box out of memory (eager attention's width^2 scores): the
    prefill is split under ``prefill_budget``, and the tokens and log-probs are those of one big prefill."""
    model, tok = tiny
    prompts = [tuple(encode_prompt(tok, build_prompt(p, tok, PromptTemplate()))) for p in mixed]
    requests = [Request(p, NoStop(), 5) for p in prompts]
    whole = ContinuousDecoder(model, [10**9], 0, slots=6).run(requests)
    seen, handle = count_rows(model)
    try:
        widest = max(len(p) for p in prompts)
        split = ContinuousDecoder(model, [10**9], 0, slots=6, prefill_budget=2 * widest**2).run(requests)
    finally:
        handle.remove()
    assert seen["calls"] > 5  # more than one prefill call before the 4 decode steps
    for a, b in zip(whole, split):
        assert a.token_ids == b.token_ids and a.logprob == pytest.approx(b.logprob, abs=TOL)
