"""The LoRA + RAG evaluation: answer matching, DROP questions keyed like the ingested games,
four conditions on the tiny model (identities: a B = 0 adapter equals the base; a RAG
condition equals scoring the templated prompt directly), the spec's validation."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_eval_helpers import peft_copy
from test_rag import PLANTED, _records, bow

from loralab.data.records import write_records
from loralab.errors import UserError
from loralab.evaluate.rag import (
    Question,
    answer_nll,
    contains,
    drop_questions,
    exact_match,
    four_way,
    normalize,
)
from loralab.rag import build_index, format_prompt, open_index
from loralab.ragstudy import load_spec, table


def test_answer_matching():
    assert normalize("The  Green Bay Packers!") == "green bay packers"
    assert exact_match("the Packers.", ["Packers"]) == 1.0 and exact_match("Packers won", ["Packers"]) == 0.0
    assert contains("It was 52 yards.", ["52"]) == 1.0 and contains("It was 520 yards.", ["52"]) == 0.0


def test_drop_questions_are_keyed_like_ingested_games():
    from loralab.data.packaged import read_packaged

    games = {it.doc for it in read_packaged("olmo:drop-nfl")}
    qs = drop_questions()
    assert qs and {q.doc for q in qs} <= games and all(q.answers and q.question for q in qs)
    one = next(iter(sorted(games)))
    assert {q.doc for q in drop_questions({one})} == {one}


@pytest.fixture()
def index(tmp_path):
    write_records(tmp_path / "docs", _records(8, seed=9, planted=PLANTED))
    build_index([str(tmp_path / "docs")], tmp_path / "idx", chunk=40, overlap=10, embed=bow, progress=False)
    return open_index(tmp_path / "idx")


QS = [Question("q1", "planted", "Who kicked the 61-yard field goal at Lambeau?", ("Zorbulon Mcfeeney",)),
      Question("q2", "game9-1", "How did the game go?", ("on",))]


def test_four_way_identities(tiny, index):
    loaded = dataclasses.replace(tiny, model=peft_copy(tiny, init=True))  # B = 0: the adapter is the base
    res = four_way(loaded, index, QS, foreign=["What causes anaemia?"], k=2, max_new_tokens=3, embed=bow,
                   progress=False)
    s = res["summary"]
    assert res["conditions"] == ["base", "base+rag", "adapter", "adapter+rag"]
    assert s["adapter"]["answer_nll"]["mean"] == pytest.approx(s["base"]["answer_nll"]["mean"], abs=1e-5)
    assert s["adapter+rag"]["answer_nll"]["mean"] == pytest.approx(s["base+rag"]["answer_nll"]["mean"], abs=1e-5)
    assert res["vs_base"]["adapter"]["contamination"]["mean"] == pytest.approx(0.0, abs=1e-5)
    assert [it["base"]["pred"] for it in res["items"]] == [it["adapter"]["pred"] for it in res["items"]]
    # base+rag is the templated prompt scored directly
    hits = index.search([q.question for q in QS], 2, embed=bow)
    nll, ntok = answer_nll(tiny, [format_prompt(q.question, h) for q, h in zip(QS, hits)],
                           [q.answers[0] for q in QS], False)
    assert s["base+rag"]["answer_nll"]["mean"] == pytest.approx(nll.sum() / ntok.sum(), rel=1e-5)
    assert res["items"][0]["sources"][0].startswith("planted#")
    assert res["retrieval"]["own_game_in_top_k"]["mean"] == 1.0
    assert all(np.isfinite(d["p_holm"]) for c in res["vs_base"].values() for d in c.values())
    md = table(res)
    assert md.count("\n") == 5 and "| adapter+rag |" in md

    moved = dataclasses.replace(tiny, model=peft_copy(tiny, init=False, seed=3))  # random B: it moves
    res2 = four_way(moved, index, QS[:1], k=2, max_new_tokens=2, embed=bow, progress=False)
    assert res2["summary"]["adapter"]["answer_nll"]["mean"] != pytest.approx(
        res2["summary"]["base"]["answer_nll"]["mean"], abs=1e-4)
    # the base conditions run with the adapter disabled: the same numbers whatever its weights
    for c in ("base", "base+rag"):
        assert res2["items"][0][c]["nll_per_token"] == pytest.approx(res["items"][0][c]["nll_per_token"], rel=1e-5)


def test_spec_validation(tmp_path):
    spec = load_spec("studies/rag.yaml")
    assert spec.index.k >= 1 and spec.data.source == "olmo:drop-nfl" and spec.train["steps"] > 0
    bad = tmp_path / "bad.yaml"
    bad.write_text("index: {k: 0}\n")
    with pytest.raises(UserError, match="bad.yaml"):
        load_spec(bad)
    bad.write_text("train: {model: x}\n")
    with pytest.raises(UserError, match="train sets model"):
        load_spec(bad)
    with pytest.raises(UserError, match="no such file"):
        load_spec(tmp_path / "missing.yaml")


@pytest.mark.slow  # ingests NFL games, trains a tiny adapter, embeds with the packaged MiniLM
def test_eval_cli_rag_on_documents_the_adapter_never_saw(tmp_path):
    import json

    from typer.testing import CliRunner

    from loralab.cli import app
    from loralab.config import TrainConfig
    from loralab.data.ingest import IngestConfig, ingest
    from loralab.data.records import read_records
    from loralab.data.split import doc_key
    from loralab.train import train

    ingest(["olmo:drop-nfl"], tmp_path / "games", IngestConfig(domain="sport", limit=12, progress=False))
    recs = list(read_records(tmp_path / "games"))
    docs = sorted({doc_key(r) for r in recs})
    seen = set(docs[:8])
    write_records(tmp_path / "train", [r for r in recs if doc_key(r) in seen])
    train(TrainConfig(model="tiny-random", data=str(tmp_path / "train"), out=str(tmp_path / "run"), steps=1,
                      batch_size=2, max_seq_len=64, domain="sport"), progress=False)
    build_index([str(tmp_path / "games")], tmp_path / "idx", progress=False)
    common = ["eval", "--model", "tiny-random", "--adapter", str(tmp_path / "run"), "--tasks", "none",
              "--gen-tasks", "none", "--no-contamination", "--no-weights", "--out", str(tmp_path / "ev"),
              "--rag", str(tmp_path / "idx"), "--rag-k", "1", "--rag-limit", "3", "--rag-prompts", "2"]
    res = CliRunner().invoke(app, common)
    assert res.exit_code == 0, res.output
    out = json.loads(next((tmp_path / "ev").glob("*/rag.json")).read_text())
    assert out["conditions"] == ["base", "base+rag", "adapter", "adapter+rag"]
    assert 1 <= out["n_questions"] <= 3 and out["index"]["unseen_documents"] == len(docs) - 8
    assert all(it["doc"] not in seen for it in out["items"])  # only games the adapter never trained on
    assert all(len(it["sources"]) == 1 for it in out["items"]) and "adapter+rag" in res.output
    # two adapters, or an adapter whose card names no training data: one line, exit 2
    bad = CliRunner().invoke(app, common + ["--adapter", str(tmp_path / "run")])
    assert bad.exit_code == 2 and "exactly one --adapter" in bad.output


@pytest.mark.slow  # a tiny study run with LoRA + RAG (ingest, train, index with MiniLM, four conditions)
def test_rag_is_a_study_axis(tmp_path):
    import csv

    from loralab.study import runner
    from loralab.study.spec import StudyError, expand, parse_spec

    spec = {"name": "ragaxis", "model": "tiny-random",
            "data": {"sources": ["olmo:drop-nfl"], "domain": "sport", "limit": 14, "chunk_tokens": 96,
                     "eval_docs": 0.4},
            "train": {"steps": 1, "rank": 2, "batch_size": 2, "max_seq_len": 64, "eval_frac": 0.0, "save_every": 0},
            "eval": {"suite": "quick", "limit": 2, "prompts": 2, "tasks": ["arc_easy"], "gen_tasks": [],
                     "intruders": False},
            "variants": {"plain": {}, "with_rag": {"eval": {"rag": {"k": 1, "limit": 2, "prompts": 1,
                                                                    "max_new_tokens": 2}}}},
            "axes": {"variant": ["plain", "with_rag"]}}
    s = parse_spec(spec)
    runner.run_study(s, tmp_path, progress=False)
    from loralab.study.report import build

    build(tmp_path / "ragaxis", s.model_dump(mode="json"))
    rows = {r["label.variant"]: r for r in csv.DictReader(open(tmp_path / "ragaxis" / "results.csv"))}
    assert rows["with_rag"]["state"] == "done" and rows["plain"]["state"] == "done"
    for cond in ("base", "base+rag", "adapter", "adapter+rag"):
        assert float(rows["with_rag"][f"rag.{cond}.answer_nll.mean"]) > 0
    assert not rows["plain"].get("rag.base.answer_nll.mean")
    bad = {**spec, "variants": {"x": {"eval": {"rag": {"kk": 1}}}}, "axes": {"variant": ["x"]}}
    with pytest.raises(StudyError, match="eval.rag"):
        expand(parse_spec(bad))
