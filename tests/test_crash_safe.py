"""The one home of crash-safe writes: a failed whole-file write leaves the old file and no temporary file."""

from __future__ import annotations

import pytest

from egcfg_pl.crash_safe import append_line, atomic_write_text


class Boom(RuntimeError):
    pass


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = atomic_write_text(tmp_path / "sub" / "a.json", "old\n")
    assert path.read_text() == "old\n"

    def fail(*args, **kwargs):
        raise Boom("killed between writing and moving into place")

    monkeypatch.setattr("egcfg_pl.crash_safe.os.replace", fail)
    with pytest.raises(Boom):
        atomic_write_text(path, "new\n")
    assert path.read_text() == "old\n" and sorted(p.name for p in path.parent.iterdir()) == ["a.json"]


def test_append_line_adds_lines(tmp_path):
    path = tmp_path / "spill" / "s.jsonl"
    append_line(path, '{"a": 1}')
    append_line(path, '{"a": 2}')
    assert path.read_text().splitlines() == ['{"a": 1}', '{"a": 2}']
