"""Raw rows from a local file or the Hugging Face hub, and the malformed-row report.

Every loader turns rows (plain dicts) into :class:`Problem` records through :func:`convert_rows`,
which collects every bad row and raises one :class:`ProblemDataError` that names the file, the
1-based row (line) number, the field and the fields a row must have. Rows are never dropped
silently: ``skip_malformed=True`` drops them with a logged warning.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egcfg_pl.problems.problem import Problem
from egcfg_pl.problems.sources import check_hub, hub_offline, unavailable

log = logging.getLogger(__name__)

MAX_REPORTED = 10  # bad rows named in one error message


class ProblemDataError(ValueError):
    """A problem file (or hub split) holds rows that cannot become problems."""


class RowError(ValueError):
    """One row is malformed: ``field`` is the key at fault ("" for the row as a whole)."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class Row:
    """A raw row and where it came from (for error messages)."""

    origin: str  # file path or "hub:<repo>[<split>]"
    number: int  # 1-based line (JSONL) or element (JSON array, Parquet, hub) number
    data: Any  # normally a dict; anything else is reported as malformed
    error: str = ""  # set when the row could not even be parsed (bad JSON)


def read_rows(path: str | Path) -> list[Row]:
    """Rows of a local ``.jsonl`` / ``.json`` (array of objects) / ``.parquet`` file, in file order.

    A line that is not valid JSON becomes a :class:`Row` with ``error`` set, so that it is reported
    together with the other bad rows instead of stopping at the first.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"problem file {path} does not exist; check the `path` setting")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        return [Row(str(path), i + 1, d) for i, d in enumerate(pq.read_table(path).to_pylist())]
    text = path.read_text(encoding="utf-8")
    if suffix == ".json" and text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise ProblemDataError(f"{path}: not valid JSON ({e}); expected an array of objects") from e
        return [Row(str(path), i + 1, d) for i, d in enumerate(items)]
    return list(_jsonl_rows(str(path), text.splitlines()))


def _jsonl_rows(origin: str, lines: Sequence[str]) -> Iterable[Row]:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            yield Row(origin, number, json.loads(line))
        except json.JSONDecodeError as e:
            yield Row(origin, number, None, error=f"not valid JSON ({e.msg} at column {e.colno})")


def hub_rows(repo: str, split: str, config: str | None = None, dataset: str = "") -> list[Row]:
    """Rows of one split of a Hugging Face hub dataset (``datasets`` caches it; tests use a local folder)."""
    ds = _load_hub(dataset or repo, repo, lambda datasets: datasets.load_dataset(repo, config, split=split))
    origin = f"hub:{repo}{'/' + config if config else ''}[{split}]"
    return [Row(origin, i + 1, d) for i, d in enumerate(ds)]


def with_split(rows: Sequence[Row], split: str) -> list[Row]:
    """Rows tagged with the split they were read from (hub rows do not carry one)."""
    return [Row(r.origin, r.number, {**r.data, "split": split}, r.error) if isinstance(r.data, dict) else r for r in rows]


def hub_json_rows(repo: str, filename: str, dataset: str = "") -> list[Row]:
    """Rows of a JSON Lines file stored in a hub dataset repo (for repos whose loader is a script)."""
    files = str(Path(repo) / filename) if Path(repo).is_dir() else f"hf://datasets/{repo}/{filename}"
    ds = _load_hub(dataset or repo, repo, lambda datasets: datasets.load_dataset("json", data_files=files, split="train"))
    return [Row(f"hub:{repo}/{filename}", i + 1, d) for i, d in enumerate(ds)]


def _load_hub(dataset: str, repo: str, load: Callable[[Any], Any]) -> Any:
    """``load(datasets)``, failing at once with one line (:func:`sources.unavailable`) when the hub is out of
    reach or ``datasets`` cannot produce the split; ``--debug`` keeps the ``datasets`` error as the cause."""
    check_hub(dataset, repo)
    import datasets

    try:
        return load(datasets)
    except Exception as error:  # datasets raises many types (ConnectionError, DatasetNotFoundError, OSError ...)
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        reason = ("HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and datasets has no cached copy" if hub_offline()
                  else f"loading {repo} from the hub failed")
        raise unavailable(dataset, repo, f"{reason} ({type(error).__name__}: {first})") from error


def require(data: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    """``data[name]``, checked to be of type ``kind``; a :class:`RowError` naming the field otherwise."""
    if name not in data:
        raise RowError(name, f"missing field {name!r}")
    value = data[name]
    if not isinstance(value, kind):
        expected = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise RowError(name, f"field {name!r} is {type(value).__name__}, expected {expected}")
    return value


def convert_rows(
    rows: Sequence[Row],
    convert: Callable[[dict[str, Any]], Problem],
    *,
    dataset: str,
    expected_fields: Sequence[str],
    skip_malformed: bool = False,
) -> list[Problem]:
    """Apply ``convert`` to every row; report all malformed rows at once (or drop them when asked)."""
    problems: list[Problem] = []
    bad: list[str] = []
    for row in rows:
        try:
            problems.append(convert(_as_dict(row)))
        except RowError as e:
            where = f"{row.origin}, row {row.number}"
            bad.append(f"{where}: {e}" + (f" (field {e.field!r})" if e.field and e.field not in str(e) else ""))
    if not bad:
        return problems
    listing = "\n  ".join(bad[:MAX_REPORTED]) + (f"\n  ... and {len(bad) - MAX_REPORTED} more" if len(bad) > MAX_REPORTED else "")
    if skip_malformed:
        log.warning("%s: skipped %d malformed row(s):\n  %s", dataset, len(bad), listing)
        return problems
    raise ProblemDataError(
        f"{dataset}: {len(bad)} malformed row(s):\n  {listing}\n"
        f"A {dataset} row needs the fields {', '.join(expected_fields)}. "
        "Fix the file, or set `skip_malformed: true` to drop these rows with a warning."
    )


def _as_dict(row: Row) -> dict[str, Any]:
    if row.error:
        raise RowError("", row.error)
    if not isinstance(row.data, dict):
        raise RowError("", f"row is a {type(row.data).__name__}, expected a JSON object")
    return row.data
