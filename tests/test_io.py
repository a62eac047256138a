"""Atomic writes: whole or nothing, and ordinary permissions."""

from __future__ import annotations

import os
import stat

import pytest

from loralab.io import atomic_dir, atomic_open, iter_jsonl, write_jsonl


def test_atomic_open_leaves_nothing_on_error(tmp_path):
    p = tmp_path / "a.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_open(p) as f:
            f.write("new")
            raise RuntimeError("boom")
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_atomic_dir_replaces_whole(tmp_path):
    d = tmp_path / "out"
    with atomic_dir(d) as t:
        (t / "x").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(d) as t:
            (t / "y").write_text("2")
            raise ValueError
    assert sorted(p.name for p in d.iterdir()) == ["x"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_permissions_follow_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_jsonl(tmp_path / "r.jsonl", [{"a": 1}])
        with atomic_dir(tmp_path / "d") as t:
            (t / "f").write_text("x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "r.jsonl").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "d").stat().st_mode) == 0o755
    assert list(iter_jsonl(tmp_path / "r.jsonl")) == [{"a": 1}]
