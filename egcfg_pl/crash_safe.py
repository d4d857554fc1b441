"""Crash-safe file writes, the one home for them: a kill or Ctrl-C never leaves half a file behind.

``atomic_write_text`` / ``atomic_write_bytes`` replace a whole file (evaluation JSON, reports, ``experiences.jsonl``, API
cache entries, the campaign's shared samples):
the text goes to a uniquely named temporary file in the same folder, is fsynced, and is moved into place with
``os.replace``, so readers see the old file or the new one. ``append_line`` adds one fsynced line (the refresh
spill): a kill can tear only the last line, which its reader skips.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` all at once; returns the path."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` all at once (temporary file, fsync, ``os.replace``); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")  # unique per writer
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (a newline is added) and fsync: on disk before the caller goes on."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
