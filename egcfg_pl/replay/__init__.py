"""Replay: experiences, P2Value, prioritized draws."""

from egcfg_pl.replay.buffer import ReplayBuffer, ReplaySettings, normalize_program
from egcfg_pl.replay.experience import Experience, experience_from_dict, experience_to_dict, p2value
from egcfg_pl.replay.priorities import DRAW_STRATEGIES, sampling_probabilities

__all__ = [
    "DRAW_STRATEGIES",
    "Experience",
    "ReplayBuffer",
    "ReplaySettings",
    "experience_from_dict",
    "experience_to_dict",
    "normalize_program",
    "p2value",
    "sampling_probabilities",
]
