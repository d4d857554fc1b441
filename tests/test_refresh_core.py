"""The refresh's core without a Trainer: ``refresh_experiences(sampler, executor, problems, settings)``."""

from __future__ import annotations

import math

import pytest

from egcfg_pl.lightning.refresh_core import refresh_experiences
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.replay import ReplaySettings
from egcfg_pl.sampling.candidate import Candidate
from egcfg_pl.sandbox import Executor, SandboxConfig

PROGRAMS = {"def add(a, b):\n    return a + b": -2.0, "def add(a, b):\n    return a - b": -4.0}


def _problem(pid: str) -> Problem:
    tests = (TestCase(kind="assert", code="assert add(1, 2) == 3", public=True),
             TestCase(kind="assert", code="assert add(0, 0) == 0", public=True))
    return Problem(id=pid, source="custom", split="train", statement="Add two numbers.", tests=tests, entry_point="add")


class FixedSampler:
    """Two fixed programs per problem (one right, one wrong); records the stream it was asked for."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], int, tuple[int, ...]]] = []

    def sample(self, problems, *, iteration=0, stream=()):
        self.calls.append(([p.id for p in problems], iteration, tuple(stream)))
        return [Candidate(p.id, program, program, logprob, 4, iteration=iteration)
                for p in problems for program, logprob in PROGRAMS.items()]


@pytest.fixture(scope="module")
def executor():
    with Executor(SandboxConfig(timeout=2.0, workers=2)) as ex:
        yield ex


def test_refresh_experiences_samples_tests_and_scores_without_a_trainer(executor):
    sampler, settings = FixedSampler(), ReplaySettings(p2value_alpha=0.5, possibility_form="normalized")
    problems = [_problem("custom/a"), _problem("custom/b")]
    experiences = refresh_experiences(sampler, executor, problems, settings, iteration=3, stream=(1, 2))
    assert sampler.calls == [(["custom/a", "custom/b"], 3, (1, 2))]
    assert [(e.problem_id, e.pass_rate) for e in experiences] == [
        ("custom/a", 1.0), ("custom/a", 0.5), ("custom/b", 1.0), ("custom/b", 0.5)]  # a - b passes add(0, 0)
    right = experiences[0]
    assert right.p2value == pytest.approx(0.5 * math.exp(-2.0 / 4) + 0.5 * 1.0)
    assert refresh_experiences(sampler, executor, [], settings) == [] and len(sampler.calls) == 1
