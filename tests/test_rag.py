"""RAG index: round trip, planted-passage retrieval, incremental and resumed builds, corrupt
indexes refused whole, prompt augmentation. Embedder: a hashed bag of words (fast, exact);
one slow test uses the packaged MiniLM."""

from __future__ import annotations

import hashlib
import json
import re

import numpy as np
import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.records import Record, write_records
from loralab.rag import (
    MANIFEST,
    RagIndexError,
    augment,
    build_index,
    chunk_words,
    documents_of,
    format_prompt,
    open_index,
    record_text,
)

FILLER = "the game went on and the teams played through the afternoon with a steady crowd".split()


def bow(texts):
    out = np.zeros((len(texts), 256), dtype=np.float32)
    for i, t in enumerate(texts):
        for w in re.findall(r"\w+", t.lower()):
            out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 256] += 1.0
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-9)


bow.cache_name = "bow-test"


def _records(n=30, seed=0, planted=None, words=60):
    rng = np.random.default_rng(seed)
    recs = [Record(kind="raw", text=" ".join(rng.choice(FILLER, size=words)) + f" game {seed}-{i}.",
                   source={"doc": f"game{seed}-{i}"}) for i in range(n)]
    if planted:
        recs.append(Record(kind="raw", text=planted, source={"doc": "planted"}))
    return recs


PLANTED = ("Zorbulon Mcfeeney kicked a 61-yard field goal in the snow at Lambeau, the longest ever seen there. "
           + " ".join(FILLER))


def _build(src, out, **kw):
    return build_index([str(src)], out, chunk=40, overlap=10, shard_rows=16, embed=bow, progress=False, **kw)


def test_chunk_words_windows():
    words = [f"w{i}" for i in range(25)]
    got = chunk_words(" ".join(words), 10, 3)
    assert got[0].split() == words[0:10] and got[1].split() == words[7:17] and got[-1].split() == words[21:25]
    assert chunk_words("a b", 10, 3) == ["a b"] and chunk_words("   ", 10, 3) == []


def test_round_trip_and_planted_passage(tmp_path):
    src = tmp_path / "docs"
    recs = _records(planted=PLANTED)
    write_records(src, recs)
    st = _build(src, tmp_path / "idx")
    idx = open_index(tmp_path / "idx")
    want = [(f"{r.source['doc']}#{r.id[:8]}:{n}", c) for r in recs
            for n, c in enumerate(chunk_words(record_text(r), 40, 10))]
    assert [(c["id"], c["text"]) for c in idx.chunks] == want  # every chunk, in order, with its source
    assert st == {"records_added": len(recs), "records_skipped": 0, "shards_written": len(idx.manifest["shards"]),
                  "chunks": len(want), "complete": True}
    assert np.allclose(idx.X, bow([t for _, t in want]))
    hits = idx.search("Who kicked the 61-yard field goal at Lambeau, Zorbulon?", k=3, embed=bow)
    assert hits[0].source == "planted" and hits[0].id.startswith("planted#")
    assert hits[0].score >= hits[1].score >= hits[2].score


def test_incremental_build_adds_only_new_records(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_records(a, _records(20, seed=1))
    write_records(b, _records(5, seed=2))
    _build(a, tmp_path / "idx")
    shards = len(open_index(tmp_path / "idx").manifest["shards"])
    again = _build(a, tmp_path / "idx")
    assert again["records_added"] == 0 and again["records_skipped"] == 20 and again["shards_written"] == 0
    more = build_index([str(a), str(b)], tmp_path / "idx", chunk=40, overlap=10, shard_rows=16, embed=bow,
                       progress=False)
    assert more["records_added"] == 5 and more["records_skipped"] == 20
    idx = open_index(tmp_path / "idx")
    assert len(idx.manifest["shards"]) == shards + more["shards_written"]
    assert {c["source"] for c in idx.chunks} == {f"game1-{i}" for i in range(20)} | {f"game2-{i}" for i in range(5)}
    with pytest.raises(RagIndexError, match="built with"):
        build_index([str(a)], tmp_path / "idx", chunk=50, overlap=10, embed=bow, progress=False)


def test_resume_after_interrupted_build_equals_one_shot(tmp_path):
    src = tmp_path / "docs"
    write_records(src, _records(40, seed=3, planted=PLANTED))
    part = _build(src, tmp_path / "idx", stop_after_shards=2)
    assert part["complete"] is False and part["shards_written"] == 2
    idx = open_index(tmp_path / "idx")  # what was committed is a whole, usable index
    assert len(idx.manifest["shards"]) == 2 and len(idx) == idx.manifest["chunks"]
    # a crash while writing the third shard left an uncommitted file behind
    (tmp_path / "idx" / "chunks-00002.jsonl").write_text('{"half": ')
    assert len(open_index(tmp_path / "idx")) == len(idx)
    rest = _build(src, tmp_path / "idx")
    assert rest["complete"] and rest["records_skipped"] == part["records_added"]
    whole = _build(src, tmp_path / "one-shot")
    a, b = open_index(tmp_path / "idx"), open_index(tmp_path / "one-shot")
    assert [c["id"] for c in a.chunks] == [c["id"] for c in b.chunks] and np.array_equal(a.X, b.X)
    assert whole["chunks"] == len(b)


def test_corrupt_index_is_refused_whole(tmp_path):
    src = tmp_path / "docs"
    write_records(src, _records(30, seed=4))
    _build(src, tmp_path / "idx")
    emb = tmp_path / "idx" / "emb-00001.npy"
    data = bytearray(emb.read_bytes())
    data[-3] ^= 0xFF
    emb.write_bytes(bytes(data))
    (tmp_path / "idx" / "chunks-00000.jsonl").unlink()
    with pytest.raises(RagIndexError) as e:
        open_index(tmp_path / "idx")
    assert "chunks-00000.jsonl missing" in str(e.value) and "emb-00001.npy: checksum differs" in str(e.value)
    with pytest.raises(RagIndexError, match="corrupt"):  # never half-read, nor added to
        _build(src, tmp_path / "idx")
    (tmp_path / "idx" / MANIFEST).write_text('{"format": "loralab-rag/1", "shar')
    with pytest.raises(RagIndexError, match="manifest unreadable"):
        open_index(tmp_path / "idx")
    r = CliRunner().invoke(app, ["rag", "query", str(tmp_path / "idx"), "who won?"])
    assert r.exit_code == 2 and "corrupt index" in r.output and "Traceback" not in r.output


def test_augment_template_and_sources(tmp_path):
    src = tmp_path / "docs"
    write_records(src, _records(10, seed=5, planted=PLANTED))
    _build(src, tmp_path / "idx")
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who is Zorbulon Mcfeeney?"}]
    new, sources = augment(msgs, tmp_path / "idx", k=2, embed=bow)
    assert msgs[1]["content"] == "Who is Zorbulon Mcfeeney?"  # the caller's list is untouched
    assert new[0] == msgs[0] and len(sources) == 2 and documents_of(sources)[0] == "planted"
    hits = open_index(tmp_path / "idx").search("Who is Zorbulon Mcfeeney?", 2, embed=bow)
    assert new[1]["content"] == format_prompt("Who is Zorbulon Mcfeeney?", hits)
    assert new[1]["content"].endswith("Question: Who is Zorbulon Mcfeeney?")
    assert f"[1] ({sources[0]}) Zorbulon" in new[1]["content"]
    assert augment(msgs, tmp_path / "idx", k=0, embed=bow) == (msgs, [])


@pytest.mark.slow
def test_cli_index_and_query_with_minilm(tmp_path):
    src = tmp_path / "notes"
    src.mkdir()
    (src / "lambeau.txt").write_text(PLANTED)
    (src / "weather.md").write_text("Rain is expected on Tuesday with strong winds along the coast.")
    r = CliRunner().invoke(app, ["rag", "index", str(src), "--out", str(tmp_path / "idx"), "--quiet"])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["rag", "query", str(tmp_path / "idx"), "longest field goal at Lambeau", "-k", "1",
                                 "--json"])
    assert r.exit_code == 0, r.output
    got = json.loads(r.output)
    assert len(got["passages"]) == 1 and got["passages"][0]["source"].endswith("lambeau.txt")
