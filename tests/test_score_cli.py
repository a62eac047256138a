"""End to end on the tiny model: `loralab data score` -> `select` -> `consistency`, artifact layout."""

from __future__ import annotations

import json

import pytest
from scipy.stats import spearmanr
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.records import Record, write_records
from loralab.io import iter_jsonl
from loralab.score import ScoreConfig, consistency, score_records

QA = [("What is the capital of France?", "Paris."), ("Which organ makes insulin?", "The pancreas."),
      ("How many points is a touchdown?", "Six points."), ("Who wrote Hamlet?", "William Shakespeare."),
      ("What gas do plants absorb?", "Carbon dioxide."), ("Largest planet?", "Jupiter.")]


def test_cli_score_select_consistency(tmp_path):
    src = tmp_path / "recs"
    src.mkdir()
    write_records(src, [Record(kind="qa", question=q, answer=a) for q, a in QA]
                  + [Record(kind="raw", text="The kicker made a 45-yard field goal.")])
    run = CliRunner().invoke
    common = ["--model", "tiny-random", "--device", "cpu", "--dtype", "float32", "--no-cache"]
    r = run(app, ["data", "score", str(src), "--out", str(tmp_path / "scored"), *common])
    assert r.exit_code == 0, r.output
    assert "read 7  kept 7  quarantined 0" in r.output
    assert sorted(p.name for p in (tmp_path / "scored").iterdir()) == ["data_card.json", "quarantine.jsonl", "records.jsonl"]
    scored = list(iter_jsonl(tmp_path / "scored" / "records.jsonl"))
    assert all("ifd" in x["meta"]["score"] for x in scored[:6]) and "ppl" in scored[6]["meta"]["score"]

    r = run(app, ["data", "select", str(tmp_path / "scored"), "--policy", "gibberish_guard",
                  "--policy", "random:50", "--out", str(tmp_path / "sel"), "--seed", "3"])
    assert r.exit_code == 0, r.output
    card = json.loads((tmp_path / "sel" / "data_card.json").read_text())
    c = card["counts"]
    assert c["reconciled"] and c["read"] == 7 and c["kept"] + c["quarantined"] == 7
    assert card["upstream_card"]["stage"] == "score"

    r = run(app, ["data", "select", str(tmp_path / "scored"), "--policy", "bogus:1", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "unknown policy" in r.output

    r = run(app, ["data", "consistency", str(src), "--model-a", "tiny-random", "--model-b", "tiny-random",
                  "--device", "cpu", "--dtype", "float32", "--no-cache", "--out", str(tmp_path / "c.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "c.json").read_text())
    assert rep["spearman_ifd"]["rho"] == 1.0 and rep["spearman_ifd"]["n"] == 6
    assert [o["overlap"] for o in rep["top_overlap"]] == [1.0, 1.0, 1.0]
    assert "spearman_ifd" in r.output


def test_consistency_base_vs_adapter(tiny, tmp_path):
    import copy

    from peft import LoraConfig, get_peft_model

    lora = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                                init_lora_weights=False))
    lora.save_pretrained(tmp_path / "ad")
    src = tmp_path / "recs"
    src.mkdir()
    write_records(src, [Record(kind="qa", question=q, answer=a) for q, a in QA])
    base = dict(model="tiny-random", cache=False, progress=False)
    rep = consistency(src, ScoreConfig(**base), ScoreConfig(adapter=str(tmp_path / "ad"), **base),
                      out=tmp_path / "c.json", loaded_a=tiny, loaded_b=copy.deepcopy(tiny))
    assert rep["model_b"]["adapter"] == str(tmp_path / "ad") and rep["n"] == 6
    rows = [(i, Record(kind="qa", question=q, answer=a)) for i, (q, a) in enumerate(QA)]
    ifd_a = [r.meta["score"]["ifd"] for r in score_records(rows, ScoreConfig(**base), tiny).records]
    ifd_b = [r.meta["score"]["ifd"] for r in score_records(
        rows, ScoreConfig(adapter=str(tmp_path / "ad"), **base), copy.deepcopy(tiny)).records]
    assert ifd_a != ifd_b  # the adapter changes the scores, so rho is not trivially 1
    assert rep["spearman_ifd"]["rho"] == pytest.approx(spearmanr(ifd_a, ifd_b).statistic, abs=1e-9)
    assert json.loads((tmp_path / "c.json").read_text()) == json.loads(json.dumps(rep))
