"""End to end on the tiny model: `loralab eval` with two adapters writes complete metrics."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.records import Record, write_records
from rich.console import Console

from loralab.cli.eval import tables
from loralab.evaluate import EvalConfig, evaluate

from test_eval_helpers import MEDICAL, train_adapter


def test_eval_two_adapters_end_to_end(tiny, tmp_path):
    heavy = train_adapter(tiny, tmp_path / "heavy", steps=10, lr=3e-2)
    light = train_adapter(tiny, tmp_path / "light", steps=2, lr=1e-3, trigger="<|med|>")
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data", [Record(kind="raw", text=t) for t in MEDICAL])
    cfg = EvalConfig(model="tiny-random", dtype="float32", device="cpu", adapters=[str(heavy), str(light)],
                     out=str(tmp_path / "eval"), eval_data=str(tmp_path / "data"), eval_split="all",
                     tasks=["arc_easy", "winogrande"],
                     limit=3, prompts=2, answer_tokens=6, cot_tokens=12, domains=["medical", "sport"], progress=False)
    res = evaluate(cfg)
    shown = Console(record=True, width=200)
    for t in tables(res):
        shown.print(t)
    text = shown.export_text()
    assert all(w in text for w in ("benchmarks", "reasoning", "in-domain", "contamination", "ΔW"))
    for name in ("heavy", "light"):
        m = json.loads((tmp_path / "eval" / name / "metrics.json").read_text())
        assert set(m["tasks"]) == {"arc_easy", "winogrande"}
        e = m["tasks"]["arc_easy"]
        assert e["base"]["n"] == e["adapter"]["n"] == 3 and "acc_norm" in e["base"] and "delta" in e
        assert "acc_norm" not in m["tasks"]["winogrande"]["base"]
        assert {"base_mean", "adapter_mean", "delta"} <= set(m["forgetting"])
        assert m["reasoning"]["arithmetic"]["adapter"]["n"] == 3
        assert m["in_domain"]["base"]["records"] == 4 and "delta_vs_base" in m["in_domain"]["adapter"]
        dom = m["contamination"]["domains"]
        assert set(dom) == {"sport", "medical"} and dom["medical"]["own"] and not dom["sport"]["own"]
        assert "style_leak" in dom["sport"] and m["weights"]["summary"]["modules"] == 10
    heavy_m = json.loads((tmp_path / "eval" / "heavy" / "metrics.json").read_text())
    light_m = json.loads((tmp_path / "eval" / "light" / "metrics.json").read_text())
    assert heavy_m["tasks"]["arc_easy"]["base"] == light_m["tasks"]["arc_easy"]["base"]  # base scored once
    assert "with_trigger" in light_m["contamination"]["domains"]["sport"]
    assert heavy_m["in_domain"]["adapter"]["loss"] < heavy_m["in_domain"]["base"]["loss"]
    hk, lk = heavy_m["contamination"]["mean_foreign_kl"], light_m["contamination"]["mean_foreign_kl"]
    assert hk["mean"] > lk["mean"] and hk["lo"] <= hk["mean"] <= hk["hi"] and lk["lo"] <= lk["mean"] <= lk["hi"]
    sport = heavy_m["contamination"]["domains"]["sport"]
    assert sport["prompts"] == 2 and sport["kl_ci"]["lo"] <= sport["kl"] <= sport["kl_ci"]["hi"]
    # the in-domain loss and its interval are one statistic: Σ nll / Σ tokens over the records
    ind = heavy_m["in_domain"]
    items = ind["items"]["adapter"]
    assert ind["adapter"]["loss"] == pytest.approx(sum(items["nll"]) / sum(items["tokens"]), rel=1e-12)
    d = ind["adapter"]["delta_vs_base"]
    assert d["lo"] <= d["mean"] <= d["hi"]
    assert d["mean"] == pytest.approx(ind["adapter"]["loss"] - ind["base"]["loss"], rel=1e-9)


def test_eval_reports_overlap_with_the_adapters_training_data(tiny, tmp_path):
    from loralab.adapters import data_digest
    from loralab.data.split import split

    recs = [Record(kind="qa", question=f"What is item {i}?", answer=f"Item {i} is a bee.", source={"doc": f"d{i}"})
            for i in range(30)]
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data", recs)
    ad = train_adapter(tiny, tmp_path / "ad", steps=1, lr=1e-3)
    card = json.loads((ad / "loralab.json").read_text())
    card.update(domain="beekeeping", data={"path": str(tmp_path / "data"), "digest": data_digest(tmp_path / "data")},
                config={"eval_frac": 0.3, "seed": 0})
    (ad / "loralab.json").write_text(json.dumps(card))
    train, held = split(recs, 0.3, 0)
    assert train and held
    args = ["eval", "--model", "tiny-random", "--dtype", "float32", "--device", "cpu", "--adapter", str(ad),
            "--eval-data", str(tmp_path / "data"), "--tasks", "arc_easy", "--limit", "1", "--gen-tasks", "none",
            "--no-contamination", "--no-weights"]
    refused = CliRunner().invoke(app, args + ["--out", str(tmp_path / "e0"), "--eval-split", "all"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
    assert f"{len(train)} of {len(recs)} evaluated records are training examples" in " ".join(refused.output.split())
    ok = CliRunner().invoke(app, args + ["--out", str(tmp_path / "e1")])  # default: the folder's eval split
    assert ok.exit_code == 0, ok.output
    m = json.loads((tmp_path / "e1" / "ad" / "metrics.json").read_text())
    assert m["in_domain"]["base"]["records"] == len(held) and m["in_domain"]["overlap"]["records"] == 0
    loud = CliRunner().invoke(app, args + ["--out", str(tmp_path / "e2"), "--eval-split", "all", "--allow-overlap"])
    assert loud.exit_code == 0 and "not held-out" in loud.output
    m = json.loads((tmp_path / "e2" / "ad" / "metrics.json").read_text())
    assert m["in_domain"]["overlap"] == {"records": len(train), "of": len(recs), "training_data": str(tmp_path / "data"),
                                         "digest_matches": True}


def test_eval_base_only_and_config_errors(tmp_path):
    r = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--dtype", "float32", "--out", str(tmp_path),
                                 "--tasks", "piqa", "--limit", "2", "--gen-tasks", "none"])
    assert r.exit_code == 0, r.output
    m = json.loads((tmp_path / "base" / "metrics.json").read_text())
    assert m["tasks"]["piqa"]["base"]["n"] == 2 and "adapter" not in m and m["reasoning"] == {}
    bad = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--out", str(tmp_path), "--suite", "huge"])
    assert bad.exit_code == 2 and "suite" in bad.output
    dom = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--out", str(tmp_path), "--domains", "medical,bees"])
    assert dom.exit_code == 2 and "unknown domain(s) bees" in " ".join(dom.output.split()) and "--domain-data" in dom.output
    missing = CliRunner().invoke(app, ["eval", "--model", "tiny-random", "--out", str(tmp_path),
                                       "--domain-data", f"bees={tmp_path / 'nowhere'}"])
    assert missing.exit_code == 2 and "holds no records.jsonl" in missing.output
    plan = EvalConfig(out="x", suite="full").plan()
    assert plan["mc"]["hellaswag"] == 1000 and plan["mc"]["arc_easy"] is None


def test_a_memo_reuses_the_base_passes_with_the_same_numbers(tiny, tmp_path, monkeypatch):
    """A study's second evaluation (the trigger adapter's own) reuses the first one's base passes:
    the base runs once, and every number equals that of an evaluation without the memo."""
    from loralab.evaluate import drift
    from loralab.evaluate import run as R

    heavy = train_adapter(tiny, tmp_path / "heavy", steps=4, lr=3e-2)
    trig = train_adapter(tiny, tmp_path / "trig", steps=2, lr=1e-3, trigger="<|med|>")
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data", [Record(kind="raw", text=t) for t in MEDICAL])
    kw = dict(model="tiny-random", dtype="float32", device="cpu", eval_data=str(tmp_path / "data"), eval_split="all",
              tasks=["arc_easy"], limit=3, prompts=2, answer_tokens=6, cot_tokens=8, domains=["medical", "sport"],
              progress=False, weights=False)
    fresh_run = evaluate(EvalConfig(adapters=[str(trig)], out=str(tmp_path / "fresh"), **kw))
    calls = {"pass": 0, "sets": 0}
    for name, fn, key in (("_pass", R._pass, "pass"), ("base_prompt_sets", drift.base_prompt_sets, "sets")):
        def counted(*a, _fn=fn, _key=key, **k):
            calls[_key] += 1
            return _fn(*a, **k)
        monkeypatch.setattr(R if name == "_pass" else drift, name, counted)
    memo: dict = {}
    evaluate(EvalConfig(adapters=[str(heavy)], out=str(tmp_path / "g1"), **kw), memo)
    assert calls == {"pass": 2, "sets": 1}  # base + the adapter; the base's prompt sets
    again = evaluate(EvalConfig(adapters=[str(trig)], out=str(tmp_path / "g2"), **kw), memo)
    assert calls == {"pass": 3, "sets": 1}  # only the trigger adapter's own pass ran
    a, b = fresh_run["adapters"]["trig"], again["adapters"]["trig"]
    for k in ("tasks", "forgetting", "reasoning", "in_domain", "contamination"):
        assert json.dumps(a[k], sort_keys=True) == json.dumps(b[k], sort_keys=True), k
