"""Outputs are owned: locked while written, replaced only with --overwrite, gone when a run fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.errors import UserError
from loralab.io import OutputBusy, atomic_dir, claim_output, lock_path, output_lock

runner = CliRunner()


def _notes(folder: Path, n: int, word: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (folder / f"n{i}.md").write_text(f"# Note {i}\n\nThe {word} hive number {i} wintered well this year.\n")
    return folder


@pytest.fixture()
def holder(tmp_path):
    """A second live process holding the lock of tmp_path/out until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from loralab.io import output_lock
        with output_lock({str(tmp_path / 'out')!r}):
            print("held", flush=True)
            sys.stdin.read()
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    yield p
    p.stdin.close()
    p.wait(timeout=30)


def test_second_writer_is_refused_while_the_first_holds_the_folder(tmp_path, holder):
    src = _notes(tmp_path / "notes", 2, "bee")
    res = runner.invoke(app, ["data", "ingest", str(src), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert res.stderr.strip() == (f"error: {tmp_path / 'out'} is being written by another loralab process "
                                  f"(PID {holder.pid}); wait for it to finish (lock file {lock_path(tmp_path / 'out')})")
    assert not (tmp_path / "out").exists()
    with pytest.raises(OutputBusy):  # the library call (as a study runner makes it) is refused the same way
        with atomic_dir(tmp_path / "out"):
            pass
    holder.stdin.close()
    holder.wait(timeout=30)
    assert not lock_path(tmp_path / "out").exists()  # released on exit
    res = runner.invoke(app, ["data", "ingest", str(src), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.stderr


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock = lock_path(tmp_path / "out")
    lock.write_text(f"{dead.pid}\n")
    src = _notes(tmp_path / "notes", 2, "bee")
    res = runner.invoke(app, ["data", "ingest", str(src), "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.stderr
    assert (tmp_path / "out" / "records.jsonl").exists() and not lock.exists()


def test_lock_is_reentrant_in_one_process_and_holds_the_pid(tmp_path):
    with output_lock(tmp_path / "x") as lock:
        assert lock.read_text().split() == [str(os.getpid())]
        with output_lock(tmp_path / "x"):  # e.g. claim_output around atomic_dir
            assert lock.exists()
        assert lock.exists()
    assert not lock.exists()


def test_existing_output_is_replaced_only_with_overwrite(tmp_path):
    out = tmp_path / "out"
    assert runner.invoke(app, ["data", "ingest", str(_notes(tmp_path / "a", 2, "bee")), "--out", str(out)]).exit_code == 0
    before = (out / "records.jsonl").read_text()
    res = runner.invoke(app, ["data", "ingest", str(_notes(tmp_path / "b", 3, "wasp")), "--out", str(out)])
    assert res.exit_code == 2 and "already exists; pass --overwrite to replace it" in res.stderr
    assert (out / "records.jsonl").read_text() == before  # untouched
    res = runner.invoke(app, ["data", "ingest", str(tmp_path / "b"), "--out", str(out), "--overwrite"])
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all("wasp" in r["text"] for r in rows)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b", "out"]  # no temp, old or lock left


def test_claim_output_cleans_up_what_it_created_unless_resumable(tmp_path):
    target = tmp_path / "a" / "b" / "run"
    with pytest.raises(RuntimeError):
        with claim_output(target):
            target.mkdir()
            (target / "config.json").write_text("{}")
            raise RuntimeError("the run failed")
    assert not (tmp_path / "a").exists()  # the folder and the parents it needed are gone
    with pytest.raises(RuntimeError):
        with claim_output(target, keep_on_error=lambda p: (p / "checkpoints").exists()):
            (target / "checkpoints").mkdir(parents=True)
            raise RuntimeError("failed after a checkpoint")
    assert (target / "checkpoints").exists()  # kept for --resume
    with pytest.raises(UserError, match="--resume"):
        with claim_output(target, keep_on_error=lambda p: True):
            pass
    with claim_output(target, resume=True):  # resuming continues what is there
        assert (target / "checkpoints").exists()
    with claim_output(target, overwrite=True, clear=True):
        assert not target.exists()  # cleared under the lock before the writer starts


def test_failed_train_leaves_no_folder_that_blocks_a_rerun(tmp_path):
    from loralab.data.records import Record, write_records

    write_records(tmp_path / "recs", [Record(kind="qa", question="Q?", answer="A.", source={"doc": "only"})])
    (tmp_path / "run.yaml").write_text("eval_frac: 0.99\nmax_seq_len: 64\n")
    args = ["train", str(tmp_path / "run.yaml"), "--model", "tiny-random", "--data", str(tmp_path / "recs"),
            "--out", str(tmp_path / "runs" / "r1"), "--steps", "1", "--device", "cpu"]
    for _ in range(2):  # the second try meets the same clear error, not "already exists"
        res = runner.invoke(app, args)
        assert res.exit_code == 2 and "no training records" in res.stderr, res.stderr
        assert not (tmp_path / "runs").exists()


def test_cache_builders_wait_for_the_first_one(tmp_path, holder):
    """A shared cache (the model copy) is built once: a second process waits instead of failing."""
    import threading
    import time

    with pytest.raises(OutputBusy):
        with output_lock(tmp_path / "out", wait=0.3):
            pass
    threading.Timer(0.5, holder.stdin.close).start()
    t0 = time.monotonic()
    with output_lock(tmp_path / "out", wait=60) as lock:
        assert lock.read_text().split() == [str(os.getpid())] and time.monotonic() - t0 >= 0.4
