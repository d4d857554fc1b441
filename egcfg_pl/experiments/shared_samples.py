"""The iteration-0 samples every variant shares (``share_initial_samples``), kept on disk in the campaign folder.

Sampling and testing the training problems is the campaign's costliest part (374 MBPP problems × 5 beams); held
in memory only, a campaign restarted in a new session would sample them again. ``SampleStore`` is the mapping
``SharedSampleRefresh`` reads and fills: one pickle per refresh key (the sha1 of the key, which names the model,
decoding, template, sandbox, precision, iteration and problem ids), written atomically.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

from egcfg_pl.crash_safe import atomic_write_bytes


class SampleStore(MutableMapping[str, Any]):
    """A dict of refresh key -> [(candidate, verdict), ...] whose values live in ``folder`` (one file per key)."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def _path(self, key: str) -> Path:
        return self.folder / f"{hashlib.sha1(key.encode()).hexdigest()}.pkl"

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and self._path(key).is_file()

    def __getitem__(self, key: str) -> Any:
        path = self._path(key)
        if not path.is_file():
            raise KeyError(key)
        with open(path, "rb") as f:
            stored_key, value = pickle.load(f)
        if stored_key != key:  # a sha1 collision, or a file copied from elsewhere
            raise KeyError(key)
        return value

    def __setitem__(self, key: str, value: Any) -> None:
        atomic_write_bytes(self._path(key), pickle.dumps((key, value)))

    def __delitem__(self, key: str) -> None:
        self._path(key).unlink()

    def __iter__(self) -> Iterator[str]:
        for path in sorted(self.folder.glob("*.pkl")):
            with open(path, "rb") as f:
                yield pickle.load(f)[0]

    def __len__(self) -> int:
        return len(list(self.folder.glob("*.pkl")))
