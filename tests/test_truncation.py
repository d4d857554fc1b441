"""Programs cut off by the token budget: recorded by both samplers, kept out of training by default (or trained on
without an ending), counted in the buffer statistics; the API possibility covers the program's tokens only."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from benchmarks.eval_summary import summarise
from egcfg_pl.lightning.datamodule import ReplayStream
from egcfg_pl.metrics.report import EvalReport
from egcfg_pl.metrics.scorer import evaluate_candidates
from egcfg_pl.models import ModelSpec, load_model, load_tokenizer
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.replay import ReplayBuffer, ReplaySettings
from egcfg_pl.replay.experience import Experience, experience_from_dict, experience_to_dict
from egcfg_pl.replay.priorities import sampling_probabilities
from egcfg_pl.sampling.api import ApiSampler, ApiSettings
from egcfg_pl.sampling.beam import HFSampler
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict

PROBLEM = Problem("toy/0", "custom", "test", "Return one.", (TestCase("assert", code="assert answer() == 1"),),
                  entry_point="answer")


def experience(i: int, passed: bool, truncated: bool) -> Experience:
    program = f"def answer():\n    return {i}" + ("" if not truncated else " +")
    verdict = Verdict(f"toy/{i}", (TestResult(Status.PASSED if passed else Status.ERROR),))
    return Experience.build(Candidate(f"toy/{i}", program, program, -1.0 - i, 10, truncated=truncated), verdict, 0.5)


# --- the buffer ----------------------------------------------------------------------------------------


def test_truncated_experiences_are_stored_counted_and_never_drawn_by_default():
    buffer = ReplayBuffer(ReplaySettings(seed=3))
    buffer.add([experience(0, True, truncated=True), experience(1, False, False), experience(2, True, False)])
    drawn = {buffer.experiences[i].problem_id for i in buffer.sample_indices(300)}
    assert drawn == {"toy/1", "toy/2"}  # the truncated (passing!) program is never drawn
    stats = buffer.stats()
    assert stats["buffer/size"] == 3 and stats["buffer/truncated"] == 1
    assert stats["buffer/frac_truncated"] == pytest.approx(1 / 3)
    assert stats["buffer/skipped_truncated"] == 1 and stats["buffer/drawable"] == 2


@pytest.mark.parametrize("strategy", ["power", "rank"])
def test_draws_follow_the_rule_over_the_drawable_entries(strategy):
    """The excluded entry gets probability 0 and the others exactly the rule applied to them alone (ranks are
    ranks among the drawable entries), so batches stay full."""
    exps = [experience(0, True, True), experience(1, False, False), experience(2, True, False)]
    buffer = ReplayBuffer(ReplaySettings(strategy=strategy, sampling_alpha=1.0))
    buffer.add(exps)
    kept = exps[1:]
    expected = sampling_probabilities([e.p2value for e in kept], [e.pass_rate for e in kept],
                                      [e.possibility for e in kept], strategy=strategy, alpha=1.0)
    assert buffer.probabilities().tolist() == pytest.approx([0.0, *expected])


def test_no_eos_setting_draws_truncated_experiences():
    buffer = ReplayBuffer(ReplaySettings(truncated="no_eos", seed=3))
    buffer.add([experience(0, True, truncated=True), experience(1, False, False)])
    assert {buffer.experiences[i].problem_id for i in buffer.sample_indices(200)} == {"toy/0", "toy/1"}
    assert buffer.stats()["buffer/skipped_truncated"] == 0 and buffer.stats()["buffer/truncated"] == 1


def test_bad_truncated_setting_and_an_undrawable_buffer_say_what_to_change():
    with pytest.raises(ValueError, match=r"data.replay.truncated .*skip or no_eos"):
        ReplaySettings(truncated="keep")
    buffer = ReplayBuffer(ReplaySettings())
    buffer.add([experience(0, True, truncated=True)])
    with pytest.raises(ValueError, match="max_new_tokens or set it to no_eos"):
        buffer.sample(4)


def test_an_epoch_with_nothing_trainable_has_no_steps_and_says_why(caplog):
    buffer = ReplayBuffer(ReplaySettings())
    buffer.add([experience(0, True, truncated=True), experience(1, False, truncated=True)])
    assert list(ReplayStream(buffer, steps=3, batch_size=2)) == []
    assert "none of the 2 replay experiences can be trained on (2 truncated" in caplog.text
    buffer.add([experience(2, False, truncated=False)])
    assert [len(b) for b in ReplayStream(buffer, steps=3, batch_size=2)] == [2, 2, 2]  # full batches of toy/2


def test_truncated_survives_the_experience_file_and_old_files_read_as_finished():
    exp = experience(0, True, truncated=True)
    data = experience_to_dict(exp)
    assert data["candidate"]["truncated"] is True and experience_from_dict(data) == exp
    del data["candidate"]["truncated"], data["candidate"]["logprob_scope"]  # a file from before the fields
    old = experience_from_dict(data)
    assert old.candidate.truncated is False and old.candidate.logprob_scope == "reply"


# --- the local sampler ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")
    return load_model(spec), load_tokenizer(spec)


def greedy(**overrides) -> GenerationSettings:
    return GenerationSettings(**{"strategy": "greedy", "max_new_tokens": 6, "progress": False, "stop_strings": [],
                                 **overrides})


def test_local_sampler_marks_generations_that_ran_out_of_budget(tiny):
    model, tok = tiny
    (cut,) = HFSampler(model, tok, greedy(), name="tiny").sample([PROBLEM])
    assert cut.truncated and cut.num_tokens == 6  # a random model says no EOS within 6 tokens
    beam = greedy(strategy="beam", num_beams=2, num_return_sequences=2)
    beams = HFSampler(model, tok, beam, name="tiny").sample([PROBLEM])
    assert [c.truncated for c in beams] == [True, True]


def test_local_sampler_generation_ended_by_a_stop_string_or_eos_is_not_truncated(tiny):
    model, tok = tiny
    (generation,) = HFSampler(model, tok, greedy(), name="tiny").generate([PROBLEM])
    stop = tok.decode(list(generation.token_ids[:2]))
    assert stop and generation.text.startswith(stop)
    (stopped,) = HFSampler(model, tok, greedy(stop_strings=[stop]), name="tiny").sample([PROBLEM])
    assert not stopped.truncated and stopped.num_tokens <= 2
    first = generation.token_ids[0]  # make the greedy first token an EOS id of this model
    saved = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tok.eos_token_id, first]
    try:
        (ended,) = HFSampler(model, tok, greedy(), name="tiny").sample([PROBLEM])
    finally:
        model.generation_config.eos_token_id = saved
    assert not ended.truncated and ended.num_tokens == 1


# --- the API sampler -----------------------------------------------------------------------------------


def api_sampler(tmp_path, response: dict) -> ApiSampler:
    """An ApiSampler whose requests are answered by ``response`` (nothing is sent)."""
    settings = ApiSettings(model="m", provider="custom", base_url="http://127.0.0.1:9/v1", api_key_env="none", n=1,
                           cache_dir=str(tmp_path / "cache"))
    sampler = ApiSampler(settings)
    sampler._fetch = lambda *args: response  # the transport is tested in test_api_sampler.py
    return sampler


def chat_response(pieces: list[tuple[str, float]], finish_reason: str = "stop", spell: bool = True) -> dict:
    text = "".join(t for t, _ in pieces)
    content = [{"token": t if spell else t.strip() + "~", "logprob": lp, "bytes": list(t.encode()) if spell else None,
                "top_logprobs": []} for t, lp in pieces]
    choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": {"content": content},
              "finish_reason": finish_reason}
    return {"choices": [choice]}


PROSE, CODE = -4.0, -0.5
REPLY = [("Sure", PROSE), ("! Here:\n", PROSE), ("```", PROSE), ("python\n", PROSE), ("def", CODE), (" answer", CODE),
         ("():\n", CODE), ("    return", CODE), (" 1", CODE), ("\n```", PROSE), ("\nDone", PROSE), (" é.", PROSE)]


def test_api_reply_cut_by_max_tokens_is_truncated(tmp_path):
    (cut,) = api_sampler(tmp_path, chat_response(REPLY[:6], finish_reason="length")).sample([PROBLEM])
    (done,) = api_sampler(tmp_path, chat_response(REPLY, finish_reason="stop")).sample([PROBLEM])
    assert cut.truncated and not done.truncated


def test_api_possibility_covers_the_program_tokens_only(tmp_path):
    (c,) = api_sampler(tmp_path, chat_response(REPLY)).sample([PROBLEM])
    assert c.program == "def answer():\n    return 1"
    assert c.logprob_scope == "program" and c.num_tokens == 5 and c.logprob == pytest.approx(5 * CODE)
    assert c.possibility() == pytest.approx(math.exp(CODE))  # the prose's -4.0 per token does not enter


def test_api_possibility_is_marked_whole_reply_when_tokens_do_not_spell_the_text(tmp_path):
    (c,) = api_sampler(tmp_path, chat_response(REPLY, spell=False)).sample([PROBLEM])
    assert c.logprob_scope == "reply" and c.num_tokens == len(REPLY)
    assert c.logprob == pytest.approx(sum(lp for _, lp in REPLY))
    assert np.isclose(c.possibility(), math.exp(c.logprob / len(REPLY)))


# --- the evaluation JSON and its committed summary -----------------------------------------------------


class PassIfReturnsOne:
    """A stand-in executor: a program passes when it ends in ``return 1``."""

    def run_many(self, jobs):
        return [Verdict(p.id, (TestResult(Status.PASSED if prog.endswith("return 1") else Status.FAILED),))
                for p, prog in jobs]


def test_eval_json_and_summary_record_program_passed_and_truncated_per_problem(tmp_path):
    problems = [PROBLEM, Problem("toy/1", "custom", "test", "Return one.", PROBLEM.tests, entry_point="answer")]
    candidates = [
        Candidate("toy/0", "def answer():\n    return 1", "raw 0", -1.0, 5),
        Candidate("toy/1", "def answer():\n    return [1,", "raw 1", -2.0, 6, truncated=True),
    ]
    report = evaluate_candidates(problems, candidates, PassIfReturnsOne(), ks=(1,))
    path = report.to_json(tmp_path / "eval.json")
    assert report.truncated_candidates == 1 and [p.truncated for p in report.problems] == [0, 1]
    again = EvalReport.from_json(path)
    assert [(c.truncated, c.text) for p in again.problems for c in p.candidates] == [(False, "raw 0"), (True, "raw 1")]
    summary = summarise(path, "cmd")
    assert summary["truncated_candidates"] == 1
    rows = {row[0]: dict(zip(summary["problems_columns"], row)) for row in summary["problems"]}
    (first,) = rows["toy/0"]["candidates"]
    (second,) = rows["toy/1"]["candidates"]
    assert first == ["def answer():\n    return 1", True, False, "raw 0"]
    assert second == ["def answer():\n    return [1,", False, True, "raw 1"]


def test_eval_json_written_before_the_fields_still_reads(tmp_path):
    report = evaluate_candidates([PROBLEM], [Candidate("toy/0", "return 1", "t", -1.0, 3)], PassIfReturnsOne(), ks=(1,))
    data = report.to_dict()
    del data["truncated_candidates"], data["problems"][0]["truncated"]
    for key in ("truncated", "text", "logprob_scope"):
        del data["problems"][0]["candidates"][0][key]
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert EvalReport.from_json(tmp_path / "old.json").problems[0].candidates[0].truncated is False
    assert summarise(tmp_path / "old.json", "")["problems"][0][5] == [["return 1", True, False, ""]]


def test_sample_and_filter_stops_when_every_kept_program_is_truncated():
    """A buffer whose only entries are cut off (skip) trains on nothing: the campaign stops as for an empty buffer."""
    from types import SimpleNamespace

    from egcfg_pl.experiments.variant import EmptyReplayError, StopOnEmptyBuffer

    buffer = ReplayBuffer(ReplaySettings(seed=0))
    buffer.add([experience(0, True, truncated=True)])
    trainer = SimpleNamespace(datamodule=SimpleNamespace(buffer=buffer), current_epoch=0)
    with pytest.raises(EmptyReplayError, match="1 kept.*truncated=skip"):
        StopOnEmptyBuffer().on_train_epoch_start(trainer, None)
    buffer.add([experience(1, True, truncated=False)])
    StopOnEmptyBuffer().on_train_epoch_start(trainer, None)  # something drawable: no error


def test_a_program_cut_off_before_any_text_is_never_drawn_under_no_eos():
    """Under ``no_eos`` an empty truncated program has no token to learn (no fence, no EOS): drawing a batch of them
    gave a NaN loss. It is stored and counted, never drawn."""
    empty = Experience.build(Candidate("toy/9", "", "", -3.0, 12, truncated=True),
                             Verdict("toy/9", (TestResult(Status.ERROR),)), 0.5)
    buffer = ReplayBuffer(ReplaySettings(seed=0, truncated="no_eos"))
    buffer.add([empty, experience(1, False, truncated=True)])
    assert {buffer.experiences[i].problem_id for i in buffer.sample_indices(100)} == {"toy/1"}
    assert buffer.stats()["buffer/skipped_empty"] == 1 and buffer.stats()["buffer/drawable"] == 1
