"""Replay batches: prompt masked in the labels, program + EOS learned; ranks draw disjoint slices."""

from __future__ import annotations

import numpy as np
import pytest

from egcfg_pl.lightning.collate import IGNORE_INDEX, ReplayCollator
from egcfg_pl.lightning.datamodule import ReplayStream
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.prompts import PromptTemplate, build_prompt, format_response
from egcfg_pl.replay import ReplayBuffer, ReplaySettings
from egcfg_pl.replay.experience import Experience
from egcfg_pl.sampling.beam import encode_prompt
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict

PROBLEMS = [
    Problem(f"mbpp/{i}", "mbpp", "train", f"Write a function f{i} that returns {i}.",
            (TestCase("assert", code=f"assert f{i}() == {i}"),), entry_point=f"f{i}")
    for i in range(6)
]


def experience(i: int, passed: bool) -> Experience:
    program = f"def f{i}():\n    return {i if passed else -1}\n"
    verdict = Verdict(f"mbpp/{i}", (TestResult(Status.PASSED if passed else Status.FAILED),))
    return Experience.build(Candidate(f"mbpp/{i}", program, program, -2.0 - i, 12), verdict, alpha=0.5)


def test_collator_masks_prompt_and_padding(smol_tokenizer):
    template = PromptTemplate()
    collate = ReplayCollator(smol_tokenizer, template, {p.id: p for p in PROBLEMS}, max_length=512)
    batch = collate([experience(0, True), experience(3, False)])
    ids, labels, mask = batch["input_ids"], batch["labels"], batch["attention_mask"]
    assert ids.shape == labels.shape == mask.shape and ids.shape[0] == 2
    for row, exp in enumerate([experience(0, True), experience(3, False)]):
        prompt = encode_prompt(smol_tokenizer, build_prompt(PROBLEMS[int(exp.problem_id.split("/")[1])],
                                                            smol_tokenizer, template))
        length = int(mask[row].sum())
        assert ids[row, : len(prompt)].tolist() == prompt  # prompt first, unpadded on the left
        assert (labels[row, : len(prompt)] == IGNORE_INDEX).all()  # no loss on the prompt
        learned = labels[row, len(prompt) : length].tolist()
        assert learned[-1] == smol_tokenizer.eos_token_id
        problem = PROBLEMS[int(exp.problem_id.split("/")[1])]
        assert smol_tokenizer.decode(learned[:-1]) == format_response(exp.program, template, problem)
        assert (labels[row, length:] == IGNORE_INDEX).all()  # nor on padding


@pytest.fixture(scope="module")
def bos_tokenizer(smol_tokenizer_dir):
    """The SmolLM2 tokenizer made to prepend BOS (as Llama / DeepSeek tokenizers do); SmolLM2's adds nothing."""
    from tokenizers.processors import TemplateProcessing
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    bos = tok.bos_token
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.bos_token_id)]
    )
    assert tok("x")["input_ids"][0] == tok.bos_token_id != tok("x", add_special_tokens=False)["input_ids"][0]
    return tok


@pytest.mark.parametrize("style", ["completion", "chat"])
def test_collator_prompt_ids_match_the_samplers(bos_tokenizer, style):
    """Training conditions on the very ids generation saw: BOS added for plain text, not doubled for chat."""
    template = PromptTemplate(style=style)
    collate = ReplayCollator(bos_tokenizer, template, {p.id: p for p in PROBLEMS}, max_length=512)
    exp = experience(2, True)
    ids, labels = collate.encode(exp)
    text = build_prompt(PROBLEMS[2], bos_tokenizer, template)
    sampled = encode_prompt(bos_tokenizer, text)  # what HFSampler feeds the model
    assert ids[: len(sampled)] == sampled and labels[: len(sampled)] == [IGNORE_INDEX] * len(sampled)
    assert labels[len(sampled)] != IGNORE_INDEX  # the program starts right after the prompt
    assert ids[0] == bos_tokenizer.bos_token_id and ids[1] != bos_tokenizer.bos_token_id  # one BOS, not two
    if style == "completion":
        assert not text.startswith(bos_tokenizer.bos_token)  # so the BOS is the tokenizer's, as in sampling


def test_collator_truncates_long_programs_keeping_labels_aligned(smol_tokenizer):
    """A long program loses its tail only: the prompt stays whole, every label is the input token at its own
    position (HF shifts inside the model), and the cut program gets no EOS. A label sequence shifted by one
    position, or a cut prompt, fails here."""
    template = PromptTemplate()
    collate = ReplayCollator(smol_tokenizer, template, {p.id: p for p in PROBLEMS}, max_length=128)
    long = Experience.build(
        Candidate("mbpp/1", "x = 1\n" * 200, "", -5.0, 600), Verdict("mbpp/1", (TestResult(Status.FAILED),)), 0.5
    )
    batch = collate([long])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    prompt = encode_prompt(smol_tokenizer, build_prompt(PROBLEMS[1], smol_tokenizer, template))
    response = format_response(long.program, template, PROBLEMS[1])
    program = smol_tokenizer(response, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(labels) == 128 and len(prompt) < 128
    assert ids[: len(prompt)] == prompt and labels[: len(prompt)] == [IGNORE_INDEX] * len(prompt)  # prompt whole
    assert ids[len(prompt) :] == program[: 128 - len(prompt)]  # the program's head, in order
    assert labels[len(prompt) :] == ids[len(prompt) :]  # aligned: label t is input token t
    assert smol_tokenizer.eos_token_id not in labels  # a cut program is not taught to end


def test_collator_never_cuts_a_long_prompt(smol_tokenizer):
    """The prompt the sampler used is kept whole; an experience whose prompt fills max_length does not fit,
    is never drawn, and is counted in the buffer statistics (it used to lose the prompt's start)."""
    template = PromptTemplate()
    wordy = Problem("mbpp/long", "mbpp", "train", "Write f. " + "Consider this detail. " * 60,
                    (TestCase("assert", code="assert f() == 1"),), entry_point="f")
    problems = {p.id: p for p in [*PROBLEMS, wordy]}
    collate = ReplayCollator(smol_tokenizer, template, problems, max_length=160)
    assert len(collate.prompt_ids("mbpp/long")) >= 160 > len(collate.prompt_ids("mbpp/0"))
    verdict = Verdict("mbpp/long", (TestResult(Status.PASSED),))
    too_long = Experience.build(Candidate("mbpp/long", "def f():\n    return 1", "", -1.0, 9), verdict, 0.5)
    assert not collate.fits(too_long) and collate.fits(experience(0, True))
    with pytest.raises(ValueError, match="data.max_length"):
        collate([too_long])
    buffer = ReplayBuffer(ReplaySettings(seed=1))
    buffer.add([too_long, experience(0, True), experience(1, False)])
    buffer.prompt_fits = collate.fits
    drawn = {e.problem_id for batch in ReplayStream(buffer, steps=20, batch_size=4) for e in batch}
    assert drawn == {"mbpp/0", "mbpp/1"}
    stats = buffer.stats()
    assert stats["buffer/skipped_long_prompt"] == 1 and stats["buffer/drawable"] == 2 and stats["buffer/size"] == 3


@pytest.mark.parametrize("style", ["chat", "completion"])
def test_collator_never_teaches_a_truncated_program_to_end(smol_tokenizer, style):
    template = PromptTemplate(style=style)
    collate = ReplayCollator(smol_tokenizer, template, {p.id: p for p in PROBLEMS}, max_length=512)
    program = "def f2():\n    return [2,"
    verdict = Verdict("mbpp/2", (TestResult(Status.ERROR),))
    cut = Experience.build(Candidate("mbpp/2", program, program, -3.0, 10, truncated=True), verdict, 0.5)
    done = Experience.build(Candidate("mbpp/2", program, program, -3.0, 10), verdict, 0.5)
    (cut_ids, cut_labels), (done_ids, done_labels) = collate.encode(cut), collate.encode(done)
    learned = [t for t in cut_labels if t != IGNORE_INDEX]
    assert smol_tokenizer.eos_token_id not in learned and "```" not in smol_tokenizer.decode(learned)[-4:]
    assert smol_tokenizer.decode(learned) == format_response(program, template, PROBLEMS[2], finished=False)
    assert done_labels[-1] == smol_tokenizer.eos_token_id and len(done_ids) > len(cut_ids)
    assert done_ids[: len(cut_ids)] == cut_ids  # the same prompt and program, only the ending differs


def test_replay_stream_ranks_get_disjoint_slices_of_one_draw():
    def stream(rank: int) -> list[list[str]]:
        buf = ReplayBuffer(ReplaySettings(seed=5))
        buf.add([experience(i, i % 2 == 0) for i in range(6)])
        return [[e.problem_id for e in batch] for batch in ReplayStream(buf, steps=3, batch_size=2, rank=rank, world_size=2)]

    single = ReplayBuffer(ReplaySettings(seed=5))
    single.add([experience(i, i % 2 == 0) for i in range(6)])
    full = [[single.experiences[j].problem_id for j in single.sample_indices(4)] for _ in range(3)]
    r0, r1 = stream(0), stream(1)
    assert len(r0) == 3 and all(len(b) == 2 for b in r0)
    assert [a + b for a, b in zip(r0, r1)] == full  # the two ranks split each global draw
    assert np.mean([e == f for a, b in zip(r0, r1) for e, f in zip(a, b)]) < 1  # not the same data
