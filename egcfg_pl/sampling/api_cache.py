"""On-disk cache of API responses: one small JSON file per request, written atomically.

The key is a SHA-256 of the canonical JSON of everything that determines the response (base URL, model,
endpoint, messages or prompt, sampling parameters, request index and seed). Each response is written as soon as it
arrives (``crash_safe.atomic_write_text``: temporary file, fsync, ``os.replace``), so Ctrl-C or a crash
loses nothing already paid for, and a rerun reads it back instead of sending the request again.
Files hold the request parameters and the response body; never a key or a header.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from egcfg_pl.crash_safe import atomic_write_text

log = logging.getLogger(__name__)


def request_key(request: dict[str, Any]) -> str:
    canonical = json.dumps(request, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseCache:
    """``get(request)`` / ``put(request, response)``; a ``None`` folder disables caching."""

    def __init__(self, folder: str | os.PathLike | None) -> None:
        self.folder = None if folder is None else Path(folder)
        if self.folder is not None:
            self.folder.mkdir(parents=True, exist_ok=True)

    def path(self, request: dict[str, Any]) -> Path | None:
        if self.folder is None:
            return None
        key = request_key(request)
        return self.folder / key[:2] / f"{key}.json"

    def get(self, request: dict[str, Any]) -> dict[str, Any] | None:
        path = self.path(request)
        if path is None or not path.is_file():
            return None
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:  # cannot happen with atomic writes, unless edited
            log.warning("ignoring unreadable cache file %s (%s); the request will be sent again", path, error)
            return None
        same = record.get("request") == json.loads(json.dumps(request))  # a hash collision would differ here
        return record["response"] if same else None

    def put(self, request: dict[str, Any], response: dict[str, Any]) -> None:
        path = self.path(request)
        if path is None:
            return
        atomic_write_text(path, json.dumps({"request": request, "response": response}, ensure_ascii=False))
