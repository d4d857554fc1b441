"""Coding problems: the ``Problem`` record, dataset loaders and the train / held-out overlap check."""

from egcfg_pl.problems.loader import DATASETS, ProblemSet, load_problems
from egcfg_pl.problems.overlap import OverlapError, check_overlap, normalize_text
from egcfg_pl.problems.problem import Problem, TestCase
from egcfg_pl.problems.rows import ProblemDataError

__all__ = [
    "DATASETS",
    "OverlapError",
    "Problem",
    "ProblemDataError",
    "ProblemSet",
    "TestCase",
    "check_overlap",
    "load_problems",
    "normalize_text",
]
