"""Faults: kill -9 at seeded random moments, and a full disk. Nothing corrupt is left,
a re-run finishes with the same result as an uninterrupted run, and a full disk is one
clear line with no partial artifact."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import FULL, assert_user_error, run_cli

KILLS = 8 if FULL else 2


def _popen(*args) -> subprocess.Popen:
    env = dict(os.environ, NO_COLOR="1")
    return subprocess.Popen([sys.executable, "-m", "loralab.cli", *map(str, args)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _corpus(tmp_path: Path, n: int) -> Path:
    src = tmp_path / "in.jsonl"
    with src.open("w") as f:
        for i in range(n):
            f.write(json.dumps({"prompt": f"How many legs has insect {i}?", "response": f"Six legs, insect {i}."}) + "\n")
        f.write("{broken\n")
    return src


def _leftovers(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp")]


def test_ingest_killed_anywhere_leaves_nothing_corrupt_and_reruns_identically(tmp_path, figures):
    src = _corpus(tmp_path, 10_000)
    ref = tmp_path / "ref"
    r = run_cli("data", "ingest", src, "--out", ref, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    t0 = time.time()
    r = run_cli("data", "ingest", src, "--out", tmp_path / "timing", timeout=600)
    whole = time.time() - t0
    rng = random.Random(0)
    interrupted = 0
    for k in range(KILLS):
        out = tmp_path / f"killed{k}"
        p = _popen("data", "ingest", src, "--out", out)
        time.sleep(rng.uniform(0.3, max(0.5, whole * 0.9)))
        if p.poll() is None:
            os.kill(p.pid, signal.SIGKILL)
            interrupted += 1
        p.wait()
        # the folder appears whole or not at all
        if out.exists():
            card = json.loads((out / "data_card.json").read_text())
            assert card["reconciliation"]["totals"]["read"] == 10_001
        r = run_cli("data", "ingest", src, "--out", out, "--overwrite", timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (out / "records.jsonl").read_bytes() == (ref / "records.jsonl").read_bytes()
        assert (out / "quarantine.jsonl").read_bytes() == (ref / "quarantine.jsonl").read_bytes()
        assert not _leftovers(tmp_path, out.name), _leftovers(tmp_path, out.name)
    assert interrupted >= 1
    figures("kill9_ingest", runs=KILLS, interrupted=interrupted, corrupt=0, rerun_identical=KILLS)


@pytest.fixture
def tiny_disk(tmp_path):
    """A 2 MiB tmpfs (root only); skipped where mounting is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_is_one_line_and_leaves_nothing(tmp_path, tiny_disk, figures):
    src = _corpus(tmp_path, 40_000)  # ~3 MB of records: more than the disk holds
    out = tiny_disk / "out"
    r = run_cli("data", "ingest", src, "--out", out, timeout=600)
    line = assert_user_error(r)
    assert "space" in line.lower(), line
    assert list(tiny_disk.iterdir()) == [], list(tiny_disk.iterdir())
    figures("enospc_ingest", runs=1, partial_artifacts=0)


def test_train_killed_resumes_and_says_from_where(tmp_path, figures):
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Q{i}: what do bees make?", "response": f"Honey, fact {i}."})
                            + "\n" for i in range(24)))
    recs = tmp_path / "recs"
    assert run_cli("data", "ingest", data, "--out", recs).returncode == 0
    out = tmp_path / "run"
    args = ["train", "--model", "tiny-random", "--data", recs, "--out", out, "--steps", "8", "--save-every", "2",
            "--device", "cpu", "--dtype", "float32", "--max-seq-len", "64", "--batch-size", "2", "-q"]
    p = _popen(*args)
    deadline = time.time() + 600
    while not list(out.glob("checkpoints/step-*/state.json")):
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.02)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert not (out / "adapter").exists()
    r = run_cli(*args, "--resume", timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "resuming" in r.stderr and "checkpoints/step-" in r.stderr, r.stderr
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    steps = [json.loads(x)["step"] for x in (out / "train_log.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == 8  # no step logged twice, the run finished
    figures("kill9_train", runs=1, resumed=1, says_checkpoint=1)
