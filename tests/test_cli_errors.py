"""The CLI's one error boundary: every bad argument of every verb is one line on stderr, exit 2.

Each case runs the real root command (its `main`, through Typer's CliRunner) and asserts
exit status 2, exactly one non-empty line on stderr, no traceback, the words that name
the mistake, and that no output folder was left behind.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.records import Record, write_records

runner = CliRunner()


@pytest.fixture(scope="module")
def recs(tmp_path_factory) -> Path:
    """A small records folder (raw + qa) and a folder that is not one."""
    root = tmp_path_factory.mktemp("cli_errors")
    rows = [Record(kind="qa", question=f"How many bees in hive {i}?", answer=f"About {i * 1000} bees.",
                   source={"doc": f"d{i}"}) for i in range(6)]
    rows.append(Record(kind="raw", text="## Hive notes\n\nThe Langstroth hive has movable frames.",
                       source={"doc": "notes"}))
    write_records(root / "recs", rows)
    (root / "plain").mkdir()
    (root / "bad.yaml").write_text("steps: [1, 2\n")
    (root / "typo.yaml").write_text("model: tiny-random\nlearning_rate: 0.1\nrnak: 4\n")
    (root / "taken").mkdir()
    (root / "taken" / "x.txt").write_text("something")
    return root


def cases(r: Path) -> list[tuple[list[str], str]]:
    """(arguments, a word the one error line must contain)."""
    recs, plain, out = str(r / "recs"), str(r / "plain"), str(r / "new" / "out")
    return [
        # data ingest
        (["data", "ingest", str(r / "nope.md"), "--out", out], "no such file"),
        (["data", "ingest", "olmo:bogus", "--out", out], "unknown packaged source"),
        (["data", "ingest", recs], "--out"),
        (["data", "ingest", recs, "--out", out, "--chunk-tokens", "abc"], "--chunk-tokens"),
        (["data", "ingest", recs, "--out", out, "--chunk-tokens", "3"], "chunk_tokens"),
        (["data", "ingest", recs, "--out", str(r / "taken")], "--overwrite"),
        (["data", "ingest", recs, "--out", out, "--bogus"], "--bogus"),
        # data clean
        (["data", "clean", str(r / "nope"), "--out", out], "no such records folder"),
        (["data", "clean", plain, "--out", out], "not a records folder"),
        (["data", "clean", recs, "--out", out, "--near-dup", "5"], "near_dup"),
        (["data", "clean", recs, "--out", recs], "input folder"),
        (["data", "clean", recs, "--out", str(r / "taken")], "--overwrite"),
        # data corrupt
        (["data", "corrupt", recs, "--out", out, "--rate", "2"], "rate"),
        (["data", "corrupt", str(r / "nope"), "--out", out], "no such records folder"),
        # data structure
        (["data", "structure", recs, "--out", out, "--mode", "bogus"], "mode"),
        (["data", "structure", recs, "--out", out, "--mode", "model", "--model", "smolm2-135m"], "did you mean"),
        (["data", "structure", recs, "--out", out, "--limit", "0"], "limit"),
        # data render
        (["data", "render", recs, "--fmt", "alpacca", "--out", str(r / "new" / "x.jsonl")], "did you mean"),
        (["data", "render", str(r / "nope"), "--out", str(r / "new" / "x.jsonl")], "no such records folder"),
        # data score
        (["data", "score", str(r / "nope"), "--out", out], "no such records folder"),
        (["data", "score", recs, "--out", out, "--model", "nope"], "unknown model spec"),
        (["data", "score", recs, "--out", out, "--adapter", str(r / "nope")], "not an adapter folder"),
        (["data", "score", recs, "--out", out, "--engine", "sparkle"], "engine"),
        (["data", "score", recs, "--out", out, "--batch-tokens", "1"], "batch_tokens"),
        # data select
        (["data", "select", recs, "--policy", "ifd_topk:-5", "--out", out], "(0, 100]"),
        (["data", "select", recs, "--policy", "random:0", "--out", out], "(0, 100]"),
        (["data", "select", recs, "--policy", "ifd_topk:150", "--out", out], "(0, 100]"),
        (["data", "select", recs, "--policy", "ifd_top:10", "--out", out], "did you mean 'ifd_topk'"),
        (["data", "select", recs, "--policy", "ppl_band:0.9,0.1", "--out", out], "LO < HI"),
        (["data", "select", recs, "--policy", "gibberish_guard:zz=1", "--out", out], "no parameter"),
        (["data", "select", str(r / "nope"), "--policy", "random:10", "--out", out], "no such"),
        # data consistency
        (["data", "consistency", str(r / "nope")], "no such records folder"),
        (["data", "consistency", recs, "--model-a", "nope"], "unknown model spec"),
        # data distill
        (["data", "distill", str(r / "nope"), "--out", out], "records.jsonl"),
        (["data", "distill", recs, "--out", out, "--max-new-tokens", "2"], "max_new_tokens"),
        # train
        (["train", "--model", "tiny-random", "--data", str(r / "nope"), "--out", out], "no such records folder"),
        (["train", "--model", "tiny-random", "--data", plain, "--out", out], "not a records folder"),
        (["train", "--model", "tiny-random", "--data", recs, "--out", out, "--rank", "0"], "rank"),
        (["train", "--model", "tiny-random", "--data", recs, "--out", out, "--role", "knowlege"], "role"),
        (["train", "--model", "nope", "--data", recs, "--out", out], "unknown model spec"),
        (["train", str(r / "missing.yaml"), "--data", recs, "--out", out], "not found"),
        (["train", str(r / "bad.yaml"), "--data", recs, "--out", out], "not valid YAML"),
        (["train", str(r / "typo.yaml"), "--data", recs, "--out", out], "did you mean 'rank'"),
        (["train", "--model", "tiny-random", "--data", recs, "--out", str(r / "taken")], "--overwrite"),
        (["train", "--model", "tiny-random", "--data", recs, "--out", out, "--resume"], "no run to resume"),
        (["train", "--model", "tiny-random", "--data", recs], "out"),
        # generate
        (["generate", "hi", "--model", "nope"], "unknown model spec"),
        (["generate", "hi", "--model", "tiny-random", "--adapter", str(r / "nope")], "no such folder"),
        (["generate", "hi", "--model", "tiny-random", "--compare", plain], "not an adapter folder"),
        (["generate", "hi", "--max-new-tokens", "0"], "--max-new-tokens"),
        (["generate"], "prompt"),
        # models, adapters
        (["models", "--bogus"], "--bogus"),
        (["adapters", str(r / "nope")], "no such folder"),
        (["bogus-verb"], "bogus-verb"),
    ]


def test_every_bad_argument_is_one_line_and_exit_2(recs):
    seen = set()
    for args, word in cases(recs):
        res = runner.invoke(app, args)
        lines = [x for x in res.stderr.splitlines() if x.strip()]
        where = f"{args}: exit {res.exit_code}, stderr {res.stderr!r}"
        assert res.exit_code == 2, where
        assert len(lines) == 1, where
        assert "Traceback" not in res.stderr + res.stdout, where
        assert lines[0].startswith("error: "), where
        assert word in lines[0], where
        assert not (recs / "new").exists(), f"{args} left {list((recs / 'new').rglob('*'))}"
        seen.add(f"data {args[1]}" if args[0] == "data" else args[0])
    assert seen >= {"data ingest", "data clean", "data corrupt", "data structure", "data render", "data score",
                    "data select", "data consistency", "data distill", "train", "generate", "models", "adapters"}


def test_config_problems_listed_at_once_with_suggestions(recs):
    res = runner.invoke(app, ["train", str(recs / "typo.yaml"), "--data", str(recs / "recs"), "--out",
                              str(recs / "new" / "o"), "--lr", "-1"])
    line = res.stderr.strip()
    assert res.exit_code == 2 and "\n" not in line
    assert "3 problems" in line and "learning_rate: unknown key (did you mean 'lr'?)" in line
    assert "rnak: unknown key (did you mean 'rank'?)" in line and "lr: Input should be greater than 0" in line


def test_internal_error_is_one_line_without_debug_and_a_traceback_with_it(recs, monkeypatch):
    import loralab.adapters

    def broken(root):
        raise KeyError("boom")

    monkeypatch.setattr(loralab.adapters, "find_adapters", broken)
    res = runner.invoke(app, ["adapters", str(recs)])
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.exit_code == 1 and len(lines) == 1 and "Traceback" not in res.stderr
    assert lines[0].startswith("internal error: KeyError") and "--debug" in lines[0]
    res = runner.invoke(app, ["--debug", "adapters", str(recs)])
    assert res.exit_code == 1 and "Traceback (most recent call last)" in res.stderr and "boom" in res.stderr


def test_full_disk_is_a_user_error(recs, monkeypatch):
    import errno

    import loralab.data.ingest

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(recs / "new" / "out" / "records.jsonl"))

    monkeypatch.setattr(loralab.data.ingest, "ingest", full)
    res = runner.invoke(app, ["data", "ingest", str(recs / "recs" / "records.jsonl"), "--out",
                              str(recs / "new" / "out")])
    lines = [x for x in res.stderr.splitlines() if x.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "no space left" in lines[0]
    assert not (recs / "new").exists()


def test_console_script_boundary_in_a_real_process(recs):
    """The installed entry point (python -m loralab.cli) behaves the same, without a terminal."""
    p = subprocess.run([sys.executable, "-m", "loralab.cli", "data", "select", str(recs / "recs"), "--policy",
                        "random:0", "--out", str(recs / "new" / "s")], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert [x for x in p.stderr.splitlines() if x.strip()] == [
        "error: invalid select setting: policies: policy 'random:0': pct must be in (0, 100] "
        "(a percentage of the policy's input), got 0 (got ['random:0'])"]
    assert not (recs / "new").exists()


def test_check_mapping_for_partial_sections():
    from loralab.config import TrainConfig, check_mapping

    assert check_mapping(TrainConfig, {"steps": 10, "rank": 4}, "train") == []
    got = check_mapping(TrainConfig, {"stpes": 10, "rank": 0, "schedule": "cosin"}, "train")
    assert len(got) == 3
    assert "train.stpes: unknown key (did you mean 'steps'?)" in got
    assert any(g.startswith("train.rank: Input should be greater than or equal to 1") for g in got)
    assert any(g.startswith("train.schedule:") for g in got)
    assert check_mapping(TrainConfig, {"steps": 5}, "train", partial=False) == [
        "train.data: required -- Records folder (records.jsonl [+ data_card.json]) to train on.",
        "train.out: required -- Run folder: adapter/, train_log.jsonl, checkpoints/."]
    assert check_mapping(TrainConfig, ["x"], "train") == ["train: must be a mapping of key: value, got list"]
    assert json.dumps(check_mapping(TrainConfig, {"trigger_mode": "alora"}, "train")).count("needs a trigger") == 1
