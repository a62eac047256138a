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


def test_read_user_jsonl_keeps_every_row_and_names_the_first_bad_line(tmp_path):
    from loralab.errors import UserError
    from loralab.io import read_user_jsonl

    f = tmp_path / "x.jsonl"
    f.write_text('{"id": "a", "text": "hi"}\n\n{"id": "b", "text": "yo", "extra": 1}\n')
    assert read_user_jsonl(f, ("id", "text")) == [{"id": "a", "text": "hi"}, {"id": "b", "text": "yo", "extra": 1}]
    for body, msg in (('{"id": "a", "text": "hi"}\n{oops\n', r"x.jsonl:2: not JSON"),
                      ('["id", "text"]\n', r"x.jsonl:1: id, text missing or not a non-empty string"),
                      ('{"id": "a", "text": 3}\n', r"x.jsonl:1: text missing"),
                      ('{"id": "a", "text": "  "}\n', r"x.jsonl:1: text missing")):
        f.write_text(body)
        with pytest.raises(UserError, match=msg):
            read_user_jsonl(f, ("id", "text"))
