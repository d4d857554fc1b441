"""Beam search on the continuous decoder: the hypotheses and scores of ``model.generate(num_beams=K)`` on each
problem alone, Σ log p equal to a forward pass, finished problems leave the batch, the sampler's default."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from egcfg_pl.prompts import PromptTemplate, build_prompt
from egcfg_pl.sampling.beam import HFSampler, encode_prompt
from egcfg_pl.sampling.beam_engine import BeamDecoder, stay_put
from egcfg_pl.sampling.engine import ContinuousDecoder, Request
from tests.test_beam import assert_matches_forward, settings
from tests.test_engine import NoStop, count_rows, mixed, tiny  # noqa: F401 (fixtures)

TOL = 1e-3
K = 3


def prompts_of(tok, problems) -> list[tuple[int, ...]]:
    return [tuple(encode_prompt(tok, build_prompt(p, tok, PromptTemplate()))) for p in problems]


def reference(model, prompt, eos: list[int], budget: int, length_penalty: float, early_stopping):
    """``generate`` on one prompt alone: [(tokens through the first EOS, sequences_score)] best first."""
    out = model.generate(
        input_ids=torch.tensor([list(prompt)]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        do_sample=False,
        num_beams=K,
        num_return_sequences=K,
        max_new_tokens=budget,
        length_penalty=length_penalty,
        early_stopping=early_stopping,
        eos_token_id=eos,
        pad_token_id=eos[0],  # the fill after a finished hypothesis: cut at the first EOS
        repetition_penalty=1.0,
        return_dict_in_generate=True,
        output_scores=True,
    )
    rows = []
    for seq, score in zip(out.sequences[:, len(prompt) :].tolist(), out.sequences_scores.tolist()):
        end = next((j + 1 for j, t in enumerate(seq) if t in eos), len(seq))
        rows.append((tuple(seq[:end]), score))
    return rows


def frequent_tokens(model, prompts, n: int) -> list[int]:
    """Tokens in the most beams of a free run but never first: as EOS they end hypotheses at varied lengths."""
    counts, first = Counter(), set()
    for prompt in prompts:
        for seq, _ in reference(model, prompt, [10**9], 8, 1.0, False):
            first.add(seq[0])
            counts.update(set(seq[1:]))
    return [t for t, _ in counts.most_common() if t not in first][:n]


@pytest.mark.parametrize(
    ("n_eos", "length_penalty", "early_stopping"),
    [(1, 1.0, False), (2, 1.0, True), (1, 2.0, "never"), (1, -1.0, False), (2, 0.0, "never")],
)
def test_same_hypotheses_and_scores_as_generate_alone(tiny, mixed, n_eos, length_penalty, early_stopping):
    model, tok = tiny
    prompts = prompts_of(tok, mixed)
    eos = frequent_tokens(model, prompts, n_eos)
    assert len(eos) == n_eos
    budgets = [10 if i % 2 else 7 for i in range(len(prompts))]
    requests = [Request(p, NoStop(), b) for p, b in zip(prompts, budgets)]
    decoder = BeamDecoder(model, eos, tok.pad_token_id, problems=2, num_beams=K, length_penalty=length_penalty,
                          early_stopping=early_stopping)
    decoded = decoder.run(requests)
    assert [(d.request, d.copy) for d in decoded] == [(i, r) for i in range(len(prompts)) for r in range(K)]
    ended_early = 0
    for i, prompt in enumerate(prompts):
        mine = [d for d in decoded if d.request == i]
        expected = reference(model, prompt, eos, budgets[i], length_penalty, early_stopping)
        assert [d.token_ids for d in mine] == [seq for seq, _ in expected], i
        scores = [d.logprob / len(d.token_ids) ** length_penalty for d in mine]
        assert scores == pytest.approx([score for _, score in expected], abs=TOL)
        for d in mine:
            assert d.truncated == (d.token_ids[-1] not in eos)
            assert len(d.token_ids) == budgets[i] or not d.truncated
            ended_early += not d.truncated
            ids = torch.tensor([list(prompt) + list(d.token_ids)])
            with torch.no_grad():
                logp = model(ids).logits[0, len(prompt) - 1 : -1].float().log_softmax(-1)
            assert d.logprob == pytest.approx(logp.gather(-1, ids[0, len(prompt) :, None]).sum().item(), abs=TOL)
    assert ended_early >= 3, "too few hypotheses ended on EOS: the test would not exercise them"


def test_stop_strings_end_hypotheses_as_on_the_generate_path(tiny, mixed):
    """The ``generate`` path ends a beam continuation on a stop string through its stopping criterion, like EOS;
    the engine does the same, so both return the same candidates."""
    model, tok = tiny
    run = settings(strategy="beam", num_beams=K, num_return_sequences=K, max_new_tokens=10, batch_size=1)
    free = HFSampler(model, tok, run).generate(mixed[:3])
    counts = Counter(tok.decode([t]).strip() for g in free for t in g.token_ids[2:])
    stop = next(s for s, _ in counts.most_common() if len(s) >= 2 and s.isascii())
    stopped = {**vars(run), "stop_strings": [stop]}
    engine = HFSampler(model, tok, settings(**stopped)).generate(mixed[:3])
    before = HFSampler(model, tok, settings(**{**stopped, "continuous": False})).generate(mixed[:3])
    assert any(stop in tok.decode(list(g.token_ids)) for g in engine), "no hypothesis ended on the stop string"
    assert [g.token_ids for g in engine] == [g.token_ids for g in before]
    assert [g.truncated for g in engine] == [g.truncated for g in before]
    assert [g.text for g in engine] == [g.text for g in before]
    assert [g.logprob for g in engine] == pytest.approx([g.logprob for g in before], abs=TOL)
    assert_matches_forward(model, tok, mixed, engine)


def test_sampler_beam_runs_on_the_engine_by_default(tiny, mixed, monkeypatch):
    model, tok = tiny
    s = settings(strategy="beam", num_beams=K, num_return_sequences=2, max_new_tokens=6, batch_size=2)
    before = HFSampler(model, tok, settings(**{**vars(s), "continuous": False})).generate(mixed)

    def no_generate(*args, **kwargs):
        raise AssertionError("beam search ran through model.generate")

    monkeypatch.setattr(model, "generate", no_generate)
    gens = HFSampler(model, tok, s).generate(mixed)
    assert [(g.problem_index, g.rank) for g in gens] == [(i, r) for i in range(len(mixed)) for r in range(2)]
    assert [g.token_ids for g in gens] == [g.token_ids for g in before]
    assert [g.logprob for g in gens] == pytest.approx([g.logprob for g in before], abs=TOL)
    assert_matches_forward(model, tok, mixed, gens)


def test_a_cache_the_engine_cannot_re_lay_out_falls_back_to_generate(tiny, mixed, monkeypatch):
    model, tok = tiny
    s = settings(strategy="beam", num_beams=K, num_return_sequences=K, max_new_tokens=5, batch_size=2)
    engine = HFSampler(model, tok, s).generate(mixed[:3])

    def unsupported(*args, **kwargs):
        raise NotImplementedError("ContinuousDecoder needs a full-attention DynamicCache")

    monkeypatch.setattr(ContinuousDecoder, "_prefill", unsupported)
    fallback = HFSampler(model, tok, s).generate(mixed[:3])
    assert [g.token_ids for g in fallback] == [g.token_ids for g in engine]
    assert [g.logprob for g in fallback] == pytest.approx([g.logprob for g in engine], abs=TOL)


def test_a_problem_leaves_when_its_search_ends(tiny, mixed):
    """Work = each problem's own steps x K rows (+ its prompt once): a problem with budget 2 does not run for the
    12 steps of its neighbours, and its slot goes to the next problem."""
    model, tok = tiny
    prompts = prompts_of(tok, mixed)
    budgets = [12 if i % 2 else 2 for i in range(len(prompts))]
    requests = [Request(p, NoStop(), b) for p, b in zip(prompts, budgets)]
    seen, handle = count_rows(model)
    try:
        decoded = BeamDecoder(model, [10**9], tok.pad_token_id, problems=3, num_beams=K).run(requests)
    finally:
        handle.remove()
    assert all(len(d.token_ids) == budgets[d.request] and d.truncated for d in decoded)
    assert seen["row_tokens"] == sum(len(p) for p in prompts) + K * sum(b - 1 for b in budgets)
    assert seen["calls"] < len(prompts) + sum(b - 1 for b in budgets)  # problems decoded side by side


def test_decoder_settings_are_validated():
    with pytest.raises(ValueError, match="num_return_sequences"):
        BeamDecoder(torch.nn.Linear(1, 1), [0], 0, problems=2, num_beams=2, num_return_sequences=3)
    with pytest.raises(ValueError, match="num_beams"):
        BeamDecoder(torch.nn.Linear(1, 1), [0], 0, problems=2, num_beams=0)


def test_a_beam_stays_in_its_parents_row_where_it_can():
    assert stay_put([0, 1, 2]) == [0, 1, 2]
    assert stay_put([1, 0, 2]) == [1, 0, 2]  # reordered by score, no row moves
    assert stay_put([0, 0, 2]) == [0, 1, 2]  # the second child of row 0 takes the free row 1
    assert stay_put([2, 2, 2]) == [2, 0, 1]
