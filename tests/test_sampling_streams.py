"""Random streams of ``sample``: one per (seed, iteration, rank, chunk), so chunks and ranks never repeat a draw."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import pytest

from egcfg_pl.lightning.refresh import ReplayRefresh
from egcfg_pl.models import ModelSpec, load_model, load_tokenizer
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.replay import ReplaySettings
from egcfg_pl.sampling.base import derive_seed
from egcfg_pl.sampling.beam import HFSampler
from egcfg_pl.sampling.settings import GenerationSettings
from egcfg_pl.sandbox.verdict import Status, TestResult, Verdict


def test_derive_seed_gives_distinct_seeds_for_distinct_parts():
    grid = list(itertools.product(range(3), range(4), range(3), range(5)))  # seed, iteration, rank, chunk
    seeds = [derive_seed(*parts) for parts in grid]
    assert len(set(seeds)) == len(grid)
    assert all(0 <= s < 2**63 for s in seeds)  # a valid torch.manual_seed value
    assert derive_seed(0, 1, 0, 0) == derive_seed(0, 1, 0, 0)  # deterministic
    # seed + iteration collided: (seed 0, iteration 1) was the stream of (seed 1, iteration 0)
    assert derive_seed(0, 1, 0, 0) != derive_seed(1, 0, 0, 0)
    assert derive_seed(0, 1, 2) != derive_seed(0, 2, 1)  # order of the parts matters


def _problem(pid: str) -> Problem:
    return Problem(id=pid, source="custom", split="train", statement="Return the sum of the numbers in a list.",
                   tests=(TestCase(kind="assert", code="assert f([1, 2]) == 3", public=True),), entry_point="f")


SAMPLE = GenerationSettings(strategy="sample", num_return_sequences=2, max_new_tokens=12, temperature=1.5,
                            batch_size=4, seed=5, progress=False, stop_strings=[])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    spec = ModelSpec(name=str(tiny_model_dir), dtype="float32", device="cpu")
    return load_model(spec), load_tokenizer(spec)


def _tokens(generations) -> list[tuple[int, ...]]:
    return [tuple(g.token_ids) for g in generations]


def test_sampler_streams_differ_and_repeat_exactly(tiny):
    model, tok = tiny
    sampler = HFSampler(model, tok, SAMPLE)
    problem = [_problem("custom/0")]
    chunk0 = _tokens(sampler.generate(problem, iteration=1, stream=(0, 0)))
    again = _tokens(sampler.generate(problem, iteration=1, stream=(0, 0)))
    chunk1 = _tokens(sampler.generate(problem, iteration=1, stream=(0, 1)))
    rank1 = _tokens(sampler.generate(problem, iteration=1, stream=(1, 0)))
    assert chunk0 == again  # the same stream is reproducible
    assert chunk0 != chunk1 and chunk0 != rank1  # another chunk or rank draws anew


def test_two_chunks_of_one_refresh_do_not_share_a_random_stream(tiny):
    """The same prompt in two chunks (chunk_problems=1) must not get the same samples."""
    model, tok = tiny
    refresh = ReplayRefresh(generation=SAMPLE, chunk_problems=1, resume_partial=False, save_experiences=False)
    streams: list[tuple[int, ...]] = []

    class Recording(HFSampler):
        def sample(self, problems, *, iteration=0, stream=()):
            streams.append(tuple(stream))
            return super().sample(problems, iteration=iteration, stream=stream)

    module = SimpleNamespace(trainer=SimpleNamespace(global_rank=0, world_size=1), sampler=lambda settings: Recording(model, tok, settings))
    refresh._executor = SimpleNamespace(
        run_many=lambda jobs: [Verdict(p.id, (TestResult(Status.FAILED, 0.0),)) for p, _ in jobs]
    )
    problems = [_problem("custom/a"), _problem("custom/b")]  # identical prompts, different ids
    experiences = refresh.refresh(module, problems, ReplaySettings(), epoch=0)
    assert streams == [(0, 0), (0, 1)]
    texts = {pid: [e.candidate.text for e in experiences if e.problem_id == pid] for pid in ("custom/a", "custom/b")}
    assert len(texts["custom/a"]) == 2 and texts["custom/a"] != texts["custom/b"]


def test_derive_seed_tells_a_shorter_stream_from_one_padded_with_zeros():
    from egcfg_pl.sampling.base import derive_seed

    assert derive_seed(0, 1) != derive_seed(0, 1, 0) != derive_seed(0, 1, 0, 0)
