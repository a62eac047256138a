"""Bad input is data, not a crash: every file of the generated corpus through ingest (alone
and all together), the records it makes through every later data verb, and every YAML
loader. Counts reconcile (read = kept + quarantined); nothing is lost; no traceback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import FULL, assert_user_error, run_cli
from corpus import data_cases, yaml_cases


def _lines(p: Path) -> int:
    return sum(1 for x in p.read_text(encoding="utf-8").splitlines() if x.strip()) if p.exists() else 0


def check_folder(out: Path) -> dict:
    """A written records folder is whole and its counts reconcile; returns its totals."""
    card = json.loads((out / "data_card.json").read_text())
    rec = card["reconciliation"]
    t = rec["totals"]
    assert t["read"] == t["kept"] + t["quarantined"], rec
    for f in rec["files"]:
        assert f["read"] == f["kept"] + f["quarantined"], f
    assert _lines(out / "quarantine.jsonl") == t["quarantined"]
    assert _lines(out / "records.jsonl") == t["records"]
    for row in map(json.loads, (out / "quarantine.jsonl").read_text().splitlines()):
        assert row["reason"] and row["location"], row
    return t


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return data_cases(tmp_path_factory.mktemp("corpus"), full=FULL)


# the default run keeps a representative subset; `make reliability` tries every case alone
SUBSET = {"deep.jsonl", "loop_dir", "long_line.txt"}  # the rest meet ingest in the mixed folder


def test_each_bad_file_alone_is_quarantined_or_refused(corpus, tmp_path, figures):
    seen = 0
    for case in corpus:
        if not FULL and case.name not in SUBSET:
            continue
        out = tmp_path / case.name.replace(".", "_")
        r = run_cli("data", "ingest", case.path, "--out", out, timeout=600)
        assert "Traceback" not in r.stderr + r.stdout, (case.name, r.stderr[-3000:])
        assert r.returncode in (0, 1, 2), (case.name, r.returncode, r.stderr[-2000:])
        if case.name == "empty_dir" and r.returncode == 2:  # nothing to read: one line, no folder left
            assert_user_error(r)
            assert not out.exists(), case.name
        else:  # every file is read: its items are kept or quarantined (1 = nothing usable remains)
            assert r.returncode in (0, 1), (case.name, r.stderr[-2000:])
            t = check_folder(out)
            assert t["read"] >= 1 or case.name == "empty_dir", case.name
        assert r.cpu < 120, (case.name, r.cpu)
        seen += 1
    assert not Path("/tmp/loralab_owned").exists()
    figures("bad_inputs_ingest", cases=seen, lost=0)


def test_everything_at_once_reconciles_and_keeps_the_good(corpus, tmp_path, figures):
    folder = tmp_path / "all"
    folder.mkdir()
    for case in corpus:
        if case.path.is_file() and os.access(case.path, os.R_OK) and case.name != "long_line.txt":
            (folder / case.name).write_bytes(case.path.read_bytes())
    out = tmp_path / "out"
    r = run_cli("data", "ingest", folder, "--out", out, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    t = check_folder(out)
    reasons = json.loads((out / "data_card.json").read_text())["reconciliation"]["quarantine_reasons"]
    # the good rows around the bad ones survive: 6 good rows in each of bom, nul_line (x2),
    # mixed_encoding, deep.jsonl (x2), deep_object, truncated.jsonl (5 whole lines)
    assert t["kept"] >= 6 * 7 + 5, t
    assert {"binary", "malformed_json"} <= set(reasons), reasons
    figures("bad_inputs_mixed_folder", files=len(list(folder.iterdir())), read=t["read"], kept=t["kept"],
            quarantined=t["quarantined"], lost=t["read"] - t["kept"] - t["quarantined"])


def test_later_verbs_take_a_damaged_records_folder(tmp_path, figures):
    """A records folder damaged after the fact (cut line, wrong types, NUL, foreign fields)."""
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": f"What do bees make {i}?", "response":
                                        f"Bees make honey and wax, fact {i}."}) + "\n" for i in range(12)))
    src = tmp_path / "src"
    assert run_cli("data", "ingest", good, "--out", src).returncode == 0
    rec = src / "records.jsonl"
    text = rec.read_text()
    rec.write_text(text + '{"kind": "qa", "prompt": 5}\n' + '{"kind": "raw", "te\n' + "[1, 2]\n"
                   + '{"kind": "qa", "prompt": "a\\u0000b", "response": "c"}\n')
    verbs = [("clean",), ("corrupt", "--rate", "0.1", "--seed", "0"), ("structure", "--mode", "template"),
             ("select", "--policy", "random:50"), ("render", "--fmt", "json")]
    ok = 0
    for verb in verbs:
        out = tmp_path / f"out_{verb[0]}"
        r = run_cli("data", verb[0], src, "--out", out, *verb[1:])
        assert "Traceback" not in r.stderr + r.stdout, (verb, r.stderr[-3000:])
        if r.returncode == 2:  # refused whole: one line naming the file and the line
            line = assert_user_error(r)
            assert "records.jsonl line 13" in line, (verb, line)
            assert not out.exists()
        else:  # or each damaged line quarantined, every line accounted for
            assert r.returncode in (0, 1), (verb, r.stderr[-2000:])
            t = check_folder(out)
            assert t["read"] == 16, (verb, t)  # 12 good + 4 damaged lines
            ok += 1
    figures("bad_inputs_later_verbs", verbs=len(verbs), reconciled=ok, lost=0)


def test_every_yaml_loader_refuses_bad_yaml_in_one_line(tmp_path, figures):
    from loralab.config import TrainConfig, load_config
    from loralab.errors import UserError
    from loralab.study.spec import load_spec

    cases = yaml_cases(tmp_path / "yaml")
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "q", "response": "a"}) + "\n")
    n = 0
    for case in cases:  # every loader in-process: a UserError with one line
        for load in (lambda p: load_config(TrainConfig, p, data="x", out="y"), load_spec):
            with pytest.raises(UserError) as e:
                load(case.path)
            assert "\n" not in str(e.value).strip() or "problems" in str(e.value), (case.name, str(e.value))
            n += 1
    # through the real entry points: exit 2, one line, bounded CPU (every case with the full suite)
    for case in cases if FULL else [c for c in cases if c.name in ("bomb.yaml", "tag.yaml")]:
        for args in (("train", case.path, "--model", "tiny-random", "--data", data, "--out", tmp_path / "run"),
                     ("study", case.path, "--dry-run")):
            r = run_cli(*args, timeout=300)
            line = assert_user_error(r)
            assert r.cpu < 30, (case.name, args[0], r.cpu)
            assert len(line) < 2000, line
            assert not (tmp_path / "run").exists()
            n += 1
    assert not Path("/tmp/loralab_owned").exists()
    figures("bad_yaml", cases=len(cases), loaders=2, refused=n)
