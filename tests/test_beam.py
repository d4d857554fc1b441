"""The local sampler: log-probs equal a separate teacher-forced forward pass, order, stops, modes, RNG."""

from __future__ import annotations

import math

import pytest
import torch

from egcfg_pl.models import LoraSettings, ModelSpec, apply_lora, load_model, load_tokenizer
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.prompts import PromptTemplate, build_prompt
from egcfg_pl.sampling.base import Sampler
from egcfg_pl.sampling.beam import (
    HFSampler,
    StopOnStrings,
    StopStringTracker,
    cut_generation,
    encode_prompt,
    length_buckets,
)
from egcfg_pl.sampling.settings import GenerationSettings

TOL = 1e-3


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")
    return load_model(spec), load_tokenizer(spec)


def make_problem(i: int, words: int) -> Problem:
    return Problem(
        id=f"custom/{i}",
        source="custom",
        split="test",
        statement="Return the sum of the numbers in a list. " * words,
        tests=(TestCase(kind="assert", code="assert f([1, 2]) == 3", public=True),),
        entry_point="f",
    )


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    """Prompts of clearly different token lengths, so one batch needs left padding."""
    return [make_problem(0, 1), make_problem(1, 9), make_problem(2, 4)]


def settings(**overrides) -> GenerationSettings:
    base = dict(max_new_tokens=8, batch_size=8, progress=False, stop_strings=[])
    return GenerationSettings(**{**base, **overrides})


def forward_logprob(model, tokenizer, problem: Problem, generated: tuple[int, ...]) -> float:
    """Σ log p(generated | prompt) from one unpadded forward pass over prompt + generated tokens."""
    prompt = encode_prompt(tokenizer, build_prompt(problem, tokenizer, PromptTemplate()))
    ids = torch.tensor([prompt + list(generated)])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    targets = ids[0, len(prompt) :]
    return logp[len(prompt) - 1 : -1].gather(-1, targets[:, None]).sum().item()


def assert_matches_forward(model, tokenizer, problems, generations) -> None:
    for g in generations:
        expected = forward_logprob(model, tokenizer, problems[g.problem_index], g.token_ids)
        assert g.logprob == pytest.approx(expected, abs=TOL), (g.problem_index, g.rank)


def test_prompts_differ_in_length(tiny, problems):
    _, tok = tiny
    lengths = {len(encode_prompt(tok, build_prompt(p, tok, PromptTemplate()))) for p in problems}
    assert len(lengths) == len(problems)


def test_beam_logprob_is_the_forward_pass_sum(tiny, problems):
    model, tok = tiny
    sampler = HFSampler(model, tok, settings(strategy="beam", num_beams=3, num_return_sequences=3), name="tiny")
    gens = sampler.generate(problems)
    assert [(g.problem_index, g.rank) for g in gens] == [(i, r) for i in range(3) for r in range(3)]
    assert_matches_forward(model, tok, problems, gens)
    assert len({round(g.logprob, 4) for g in gens}) > 1, "possibility must not be constant"
    for i in range(3):  # no EOS / stop in 8 random tokens: equal lengths, so beams come best-sum first
        beam = [g for g in gens if g.problem_index == i]
        assert all(len(g.token_ids) == 8 for g in beam)
        assert all(a.logprob >= b.logprob - TOL for a, b in zip(beam, beam[1:]))
        assert len({g.token_ids for g in beam}) == 3


def test_greedy_logprob_and_tokens_match_forward(tiny, problems):
    model, tok = tiny
    gens = HFSampler(model, tok, settings(strategy="greedy")).generate(problems)
    assert len(gens) == len(problems)
    assert_matches_forward(model, tok, problems, gens)
    for g in gens:  # left padding did not change the decoding: each token is the unpadded argmax
        prompt = encode_prompt(tok, build_prompt(problems[g.problem_index], tok, PromptTemplate()))
        ids = torch.tensor([prompt + list(g.token_ids)])
        with torch.no_grad():
            argmax = model(ids).logits[0, len(prompt) - 1 : -1].argmax(-1).tolist()
        assert argmax == list(g.token_ids)


def test_sample_returns_candidates_in_problem_order(tiny, problems):
    model, tok = tiny
    sampler = HFSampler(model, tok, settings(strategy="beam", num_beams=2, num_return_sequences=2), name="tiny")
    assert isinstance(sampler, Sampler)
    cands = sampler.sample(problems, iteration=3)
    assert [c.problem_id for c in cands] == [p.id for p in problems for _ in range(2)]
    assert [c.rank for c in cands] == [0, 1] * 3
    assert all(c.source == "tiny" and c.iteration == 3 and c.num_tokens == 8 for c in cands)
    assert all(math.isfinite(c.logprob) and c.logprob < 0 for c in cands)
    stats = sampler.last_stats
    assert stats.candidates == 6 and stats.generated_tokens == 48 and stats.tokens_per_second > 0


def test_length_buckets_group_by_length_and_sampler_keeps_order(tiny, problems):
    assert length_buckets([5, 50, 7, 49], batch_size=2) == [[1, 3], [2, 0]]
    assert length_buckets([5, 50, 7, 49], batch_size=2, enabled=False) == [[0, 1], [2, 3]]
    model, tok = tiny
    bucketed = HFSampler(model, tok, settings(strategy="greedy", batch_size=2)).generate(problems)
    plain = HFSampler(model, tok, settings(strategy="greedy", batch_size=1, length_buckets=False)).generate(problems)
    assert [g.problem_index for g in bucketed] == [0, 1, 2]
    assert [g.token_ids for g in bucketed] == [g.token_ids for g in plain]
    assert [g.logprob for g in bucketed] == pytest.approx([g.logprob for g in plain], abs=TOL)


def _stop_inside(tok, ids: tuple[int, ...], first: int = 2) -> tuple[str, int]:
    """An ASCII piece of a token (at index >= first) that does not occur earlier in the text: a stop string."""
    for k in range(first, len(ids) - 1):
        piece = tok.decode([ids[k]]).strip()
        prefix = tok.decode(list(ids[:k]), skip_special_tokens=True)
        if len(piece) >= 2 and piece.isascii() and piece not in prefix + piece[:-1]:
            return piece, k
    pytest.skip("no usable stop string in this random continuation")


def assert_stopped_at(tok, generations, stop: str, budget: int) -> None:
    """Each continuation ends with the token that completes ``stop`` (or used its whole budget); text is cut."""
    for g in generations:
        assert stop not in g.text
        decoded = tok.decode(list(g.token_ids), skip_special_tokens=True)
        if stop in decoded:
            assert stop not in tok.decode(list(g.token_ids[:-1]), skip_special_tokens=True)
            assert g.text == decoded.split(stop)[0]
        else:
            assert len(g.token_ids) == budget


def test_stop_string_ends_sampling_and_cuts_text(tiny, problems):
    model, tok = tiny
    run = settings(strategy="sample", num_return_sequences=1, max_new_tokens=12, seed=3)
    full = HFSampler(model, tok, run).generate(problems[:1])[0]  # the tiny model's greedy output is all "\n"
    stop, k = _stop_inside(tok, full.token_ids)
    gens = HFSampler(model, tok, settings(**{**vars(run), "stop_strings": [stop]})).generate(problems[:1])
    assert gens[0].token_ids == full.token_ids[: k + 1]  # same seed: same tokens, through the stop token
    assert gens[0].text == tok.decode(list(full.token_ids), skip_special_tokens=True).split(stop)[0]
    assert_stopped_at(tok, gens, stop, 12)
    assert_matches_forward(model, tok, problems, gens)


def test_stop_string_finishes_beams(tiny, problems):
    model, tok = tiny
    run = settings(strategy="beam", num_beams=3, num_return_sequences=3, max_new_tokens=12)
    full = HFSampler(model, tok, run).generate(problems[:1])
    stop = tok.decode([full[-1].token_ids[-1]]).strip()  # the last token of the last beam
    assert not any(stop in tok.decode(list(g.token_ids[:-1])) for g in full), "pick another stop string"
    gens = HFSampler(model, tok, settings(**{**vars(run), "stop_strings": [stop]})).generate(problems[:1])
    assert len(gens) == 3
    assert any(stop in tok.decode(list(g.token_ids)) for g in gens), "no beam was finished by the stop string"
    assert_stopped_at(tok, gens, stop, 12)
    assert_matches_forward(model, tok, problems, gens)


def test_stop_criterion_is_per_problem_and_ignores_the_prompt(smol_tokenizer):
    def enc(text: str) -> list[int]:
        return smol_tokenizer(text, add_special_tokens=False)["input_ids"]

    prompt = enc("x = 1\n")  # ends with the newline that starts the stop string "\ndef"
    rows = [enc("def f"), enc("\ndef"), enc("\ndef"), enc("pass") * 2]  # 2 rows per problem, 2 problems
    assert len({len(r) for r in rows}) == 1
    trackers = [StopStringTracker(smol_tokenizer, ["\ndef"]), StopStringTracker(smol_tokenizer, [])]
    done = StopOnStrings(trackers, len(prompt))(torch.tensor([prompt + r for r in rows]), None)
    assert done.tolist() == [False, True, False, False]


def test_rescoring_in_slices_and_chunks_gives_the_same_sums(tiny, problems, monkeypatch):
    from egcfg_pl.sampling import beam

    model, tok = tiny
    gens = HFSampler(model, tok, settings(strategy="beam", num_beams=3, num_return_sequences=3)).generate(problems)
    prompts = [encode_prompt(tok, build_prompt(problems[g.problem_index], tok, PromptTemplate())) for g in gens]
    rows = [list(g.token_ids[: 3 + g.rank]) for g in gens]  # ragged continuations: right padding inside
    whole = beam.sequence_logprobs(model, prompts, rows, tok.pad_token_id)
    monkeypatch.setattr(beam, "LOGITS_BUDGET_BYTES", 1)  # one position per slice
    monkeypatch.setattr(beam, "RESCORE_ROWS", 2)  # a problem's beams split across chunks
    assert beam.sequence_logprobs(model, prompts, rows, tok.pad_token_id) == pytest.approx(whole, abs=1e-4)
    expected = [forward_logprob(model, tok, problems[g.problem_index], tuple(r)) for g, r in zip(gens, rows)]
    assert whole == pytest.approx(expected, abs=TOL)


def test_cut_generation_keeps_eos_and_drops_padding(smol_tokenizer):
    eos, pad = 2, 2
    tracker = StopStringTracker(smol_tokenizer, [])
    assert cut_generation([5, 6, eos, pad, pad], {eos}, tracker) == [5, 6, eos]
    assert cut_generation([5, 6, 7], {eos}, tracker) == [5, 6, 7]
    ids = smol_tokenizer("x = 1\ndef g():\n    pass", add_special_tokens=False)["input_ids"]
    stop = StopStringTracker(smol_tokenizer, ["\ndef "])
    kept = cut_generation(ids + [eos], {eos}, stop)
    assert "\ndef " in smol_tokenizer.decode(kept) and "\ndef " not in smol_tokenizer.decode(kept[:-1])
    assert stop.cut_text(smol_tokenizer.decode(kept)) == "x = 1"


def test_train_mode_restored_and_eval_during_generation(tiny, problems):
    model, tok = tiny
    seen: list[bool] = []
    handle = model.register_forward_hook(lambda module, args, out: seen.append(module.training))
    try:
        model.train()
        HFSampler(model, tok, settings(strategy="greedy", max_new_tokens=2)).generate(problems[:1])
        assert model.training and seen and not any(seen)
        model.eval()
        HFSampler(model, tok, settings(strategy="greedy", max_new_tokens=2)).generate(problems[:1])
        assert not model.training
    finally:
        handle.remove()
        model.eval()


def test_sampling_is_seeded_and_leaves_global_rng_alone(tiny, problems):
    model, tok = tiny
    sampler = HFSampler(model, tok, settings(strategy="sample", num_return_sequences=2, seed=7))
    torch.manual_seed(123)
    first = sampler.generate(problems[:2], iteration=1)
    after = torch.rand(3)
    torch.manual_seed(123)
    expected = torch.rand(3)
    assert torch.equal(after, expected), "sampling consumed the caller's RNG stream"
    again = sampler.generate(problems[:2], iteration=1)
    other = sampler.generate(problems[:2], iteration=2)
    assert [g.token_ids for g in first] == [g.token_ids for g in again]
    assert [g.token_ids for g in first] != [g.token_ids for g in other]
    assert_matches_forward(model, tok, problems, first)  # the model's own log-prob, not the T=0.8 one


def test_peft_model_samples_with_lora_active(tiny_model_dir, problems):
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")
    base, tok = load_model(spec), load_tokenizer(spec)
    plain = HFSampler(base, tok, settings(strategy="greedy")).generate(problems[:2])
    peft_model = apply_lora(base, LoraSettings(r=4, alpha=64))
    torch.manual_seed(0)
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:
            param.data.normal_(std=0.5)  # a trained-looking adapter (fresh LoRA B is zero)
    peft_model.train()
    gens = HFSampler(peft_model, tok, settings(strategy="greedy")).generate(problems[:2])
    assert peft_model.training
    peft_model.eval()
    assert_matches_forward(peft_model, tok, problems, gens)
    assert [g.logprob for g in gens] != pytest.approx([g.logprob for g in plain], abs=TOL)


def test_settings_validation_names_the_field():
    with pytest.raises(ValueError, match="num_return_sequences"):
        GenerationSettings(strategy="beam", num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="strategy"):
        GenerationSettings(strategy="nucleus")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="temperature"):
        GenerationSettings(strategy="sample", temperature=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationSettings(max_new_tokens=0)
    assert GenerationSettings(strategy="greedy", num_return_sequences=5).candidates_per_problem == 1
    assert GenerationSettings(strategy="sample", num_return_sequences=4, num_beams=1).rows_per_problem == 4


@pytest.mark.slow
def test_embedded_model_greedy_on_humaneval():
    from egcfg_pl.problems.loader import load_problems

    spec = ModelSpec(dtype="float32", device="cpu")  # the embedded SmolLM2-135M-Instruct GGUF
    model, tok = load_model(spec), load_tokenizer(spec)
    problems = load_problems("humaneval", limit=2)
    sampler = HFSampler(model, tok, GenerationSettings(strategy="greedy", max_new_tokens=160, progress=False))
    cands = sampler.sample(problems)
    assert [c.problem_id for c in cands] == [p.id for p in problems]
    for c, p in zip(cands, problems):
        assert c.program.strip() and f"def {p.entry_point}" in c.program
        assert math.isfinite(c.logprob) and c.logprob < 0 and 0 < c.num_tokens <= 160
        assert "```" not in c.text  # the prompt opened the block; generation stopped at the closing fence, cut
    assert sampler.last_stats.tokens_per_second > 0
