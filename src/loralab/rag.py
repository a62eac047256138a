"""Retrieval: documents -> chunks -> embeddings (MiniLM, or multilingual e5) -> an index; passages into the prompt.

    loralab rag index runs/data/sport-raw notes/ olmo:drop-nfl --out idx/
    loralab rag query idx/ "Who kicked the longest field goal?" -k 3

    from loralab.rag import augment, open_index
    messages, sources = augment([{"role": "user", "content": "Who won?"}], "idx/", k=3)

Inputs are records folders (records.jsonl), records .jsonl files, or anything `loralab data
ingest` reads (files, folders, `olmo:<name>` packaged corpora), which is ingested first
into `<out>/.ingest/`. Each record's text (raw text; prompt + response otherwise) is cut
into windows of `chunk_words` words overlapping by `overlap` words. A chunk keeps its
source: `id` = "<doc>#<record id[:8]>:<n>" and `source` = the record's document.

The index folder:
  manifest.json        format, embedder, chunking, shards (file names, sha256, row counts),
                       and the digest of every indexed record (key -> digest)
  chunks-00000.jsonl   one chunk per line: id, source, record, digest, text
  emb-00000.npy        (rows, 384) float32 unit-norm embeddings, same order

Incremental and resumable: records whose digest the manifest already holds are skipped,
new ones go into new shards; each shard's files are written atomically first and the
manifest (atomically) after, so an interrupted build leaves only complete, committed
shards (an uncommitted shard is overwritten by the next build). Records are keyed by
their content id, so edited text is indexed as a new record; to drop content, build a
new index.
Opening checks every shard against the manifest (sha256, rows, shape) and refuses a
corrupt index as a whole, listing every problem: it is never half-read.
Search: FAISS inner product (IndexFlatIP) when `faiss` is installed, else one numpy matmul;
both exact, so results are equal. Queries are embedded by the query side of the index's own
embedder (manifest). `mode="hybrid"` fuses that ranking with BM25 over the chunks (bm25s) by
reciprocal rank. Recall of a labelled question set: `evaluate.retrieval.retrieval_recall`.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

from .errors import UserError
from .io import atomic_open, read_json, write_json

FORMAT = "loralab-rag/1"
MODES = ("dense", "hybrid")
RRF_K = 60  # reciprocal-rank fusion constant (Cormack et al. 2009)
FUSE_DEPTH = 100  # ranks of each list that enter the fusion
MANIFEST = "manifest.json"
TEMPLATE = ("Use the passages below when they help to answer.\n\n{passages}\n\n"
            "Question: {question}")
PASSAGE = "[{n}] ({id}) {text}"


class RagIndexError(UserError):
    """An index that cannot be used as it is (missing, corrupt, built with other settings)."""


@dataclass
class Passage:
    id: str
    source: str
    text: str
    score: float

    def to_json(self) -> dict:
        return {"id": self.id, "source": self.source, "score": round(self.score, 4), "text": self.text}


# ----------------------------------------------------------------- inputs

def record_text(rec) -> str:
    """A record's text as a passage: raw text, or its prompt and response."""
    from .data.records import to_messages

    return "\n".join(m["content"] for m in to_messages(rec)).strip()


def _records_in(inputs: Sequence[str], work: Path, progress: bool) -> Iterator:
    from .data.records import RECORDS_FILE, read_records

    plain = []
    for spec in inputs:
        p = Path(spec).expanduser()
        if p.is_dir() and (p / RECORDS_FILE).is_file():
            yield from read_records(p)
        elif p.is_file() and p.name == RECORDS_FILE:
            yield from read_records(p)
        else:
            plain.append(spec)
    if plain:  # anything else goes through ingest: formats, encodings, quarantine, packaged corpora
        from .data.ingest import IngestConfig, ingest

        key = hashlib.sha256(json.dumps(sorted(plain)).encode()).hexdigest()[:12]
        folder = work / f"ingest-{key}"
        ingest(list(plain), folder, IngestConfig(progress=progress))
        yield from read_records(folder)


def chunk_words(text: str, size: int, overlap: int) -> list[str]:
    """Windows of `size` words, each starting `size - overlap` words after the previous."""
    words = text.split()
    if len(words) <= size:
        return [" ".join(words)] if words else []
    step = max(size - overlap, 1)
    return [" ".join(words[i: i + size]) for i in range(0, max(len(words) - overlap, 1), step)]


# ----------------------------------------------------------------- build

def _sha_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _settings(chunk: int, overlap: int, embedder: str) -> dict:
    return {"chunk_words": chunk, "overlap": overlap, "embedder": embedder}


def build_index(inputs: Sequence[str], out: str | Path, *, chunk: int = 120, overlap: int = 20,
                shard_rows: int = 512, embed: Callable | None = None, embedder: str | None = None,
                progress: bool = True, stop_after_shards: int | None = None) -> dict:
    """Add `inputs` to the index at `out` (created when absent); returns counts.

    `stop_after_shards` ends the build after that many new shards (resumable, for tests
    of an interrupted build); `embed` maps texts to unit-norm vectors, else `embedder` names a
    packaged one (default MiniLM; "multilingual-e5-small" embeds chunks as e5 passages).
    """
    from .embed import EMBEDDER
    from .embed import embedder as named

    if overlap >= chunk:
        raise UserError(f"overlap ({overlap}) must be smaller than chunk ({chunk}) words")
    if embed is None:
        embedder = embedder or EMBEDDER
        embed = named(embedder, passages=True)
    embedder = embedder or getattr(embed, "cache_name", None) or getattr(embed, "__name__", "custom")
    out = Path(out)
    want = _settings(chunk, overlap, embedder)
    if (out / MANIFEST).exists():
        man = open_index(out).manifest  # verified whole before anything is added
        if man["settings"] != want:
            raise RagIndexError(f"index {out} was built with {man['settings']}, not {want}; use another --out")
    else:
        out.mkdir(parents=True, exist_ok=True)
        man = {"format": FORMAT, "settings": want, "shards": [], "sources": {}, "chunks": 0}
    seen, added, skipped, written = dict(man["sources"]), 0, 0, 0
    pending: list[dict] = []
    pending_src: dict[str, str] = {}

    def flush():
        nonlocal written
        k = len(man["shards"])
        cf, ef = out / f"chunks-{k:05d}.jsonl", out / f"emb-{k:05d}.npy"
        X = np.asarray(embed([c["text"] for c in pending]), dtype=np.float32)  # (rows, dim)
        with atomic_open(cf) as f:
            for c in pending:
                f.write(json.dumps(c, ensure_ascii=False) + "\n")
        with atomic_open(ef, "wb", encoding=None) as f:
            np.save(f, X)
        man["shards"].append({"chunks": cf.name, "emb": ef.name, "rows": len(pending), "dim": int(X.shape[1]),
                              "sha256": {cf.name: _sha_file(cf), ef.name: _sha_file(ef)}})
        man["sources"].update(pending_src)
        man["chunks"] += len(pending)
        write_json(out / MANIFEST, man)  # the commit point: the shard exists once the manifest names it
        pending.clear()
        pending_src.clear()
        written += 1

    for rec in _records_in(inputs, out / ".ingest", progress):
        text = record_text(rec)
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        key = rec.id
        if seen.get(key) == digest or pending_src.get(key) == digest:
            skipped += 1
            continue
        doc = str((rec.source or {}).get("doc") or (rec.source or {}).get("path") or rec.id)
        for n, piece in enumerate(chunk_words(text, chunk, overlap)):
            pending.append({"id": f"{doc}#{rec.id[:8]}:{n}", "source": doc, "record": key, "digest": digest,
                            "text": piece})
        pending_src[key] = digest
        added += 1
        if len(pending) >= shard_rows:  # shards end at record boundaries: a record is whole or absent
            flush()
            if stop_after_shards is not None and written >= stop_after_shards:
                return {"records_added": added, "records_skipped": skipped, "shards_written": written,
                        "chunks": man["chunks"], "complete": False}
    if pending:
        flush()
    if not man["shards"]:
        write_json(out / MANIFEST, man)
    return {"records_added": added, "records_skipped": skipped, "shards_written": written,
            "chunks": man["chunks"], "complete": True}


# ----------------------------------------------------------------- open / search

class Index:
    def __init__(self, path: Path, manifest: dict, chunks: list[dict], X: np.ndarray):
        self.path, self.manifest, self.chunks, self.X = path, manifest, chunks, X  # X: (n, dim)
        self._faiss = None
        self._bm25 = None  # built on the first hybrid search
        try:
            import faiss  # optional

            self._faiss = faiss.IndexFlatIP(X.shape[1])
            self._faiss.add(X)
        except ImportError:
            pass

    def __len__(self) -> int:
        return len(self.chunks)

    @property
    def backend(self) -> str:
        return "faiss" if self._faiss is not None else "numpy"

    def _top(self, Q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, chunk indices), each (q, k), best first, for query vectors Q (q, dim)."""
        if self._faiss is not None:
            return self._faiss.search(np.ascontiguousarray(Q, dtype=np.float32), k)
        sims = Q @ self.X.T  # (q, n) cosine similarities
        I = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(sims, I, axis=1), I

    def _passage(self, i: int, score: float) -> Passage:
        c = self.chunks[i]
        return Passage(c["id"], c["source"], c["text"], float(score))

    def search_vectors(self, Q: np.ndarray, k: int) -> list[list[Passage]]:
        """Top-k passages for each query vector (Q: (q, dim) unit-norm)."""
        k = min(k, len(self.chunks))
        if k <= 0:
            return [[] for _ in range(len(Q))]
        S, I = self._top(Q, k)
        return [[self._passage(int(i), s) for s, i in zip(srow, irow)] for srow, irow in zip(S, I)]

    @property
    def embedder(self) -> str:
        return self.manifest["settings"]["embedder"]

    def search(self, queries: str | Sequence[str], k: int = 3, embed: Callable | None = None,
               mode: str = "dense"):
        """Top-k passages for a query (a list of them for a list of queries). `embed` defaults to
        the query side of the embedder the index was built with. `mode`: "dense" (embedding
        inner product) or "hybrid" (reciprocal-rank fusion of the dense and BM25 rankings)."""
        if mode not in MODES:
            raise UserError(f"search mode must be one of {', '.join(MODES)}, not {mode!r}")
        if embed is None:
            from .embed import EMBEDDERS, embedder

            if self.embedder not in EMBEDDERS:
                raise RagIndexError(f"index {self.path} was built with embedder {self.embedder!r}: pass its embed")
            embed = embedder(self.embedder)
        one = isinstance(queries, str)
        qs = [queries] if one else list(queries)
        Q = np.asarray(embed(qs), dtype=np.float32)
        if mode == "dense":
            res = self.search_vectors(Q, k)
        else:
            res = self._hybrid(qs, Q, k)
        return res[0] if one else res

    def _lexical(self):
        """BM25 over the chunks (bm25s, English stop words), built on first use."""
        if self._bm25 is None:
            import bm25s

            self._bm25 = bm25s.BM25()
            self._bm25.index(bm25s.tokenize([c["text"] for c in self.chunks], stopwords="en", show_progress=False),
                             show_progress=False)
        return self._bm25

    def bm25_ranks(self, queries: Sequence[str], depth: int) -> list[list[int]]:
        """Chunk indices by BM25 score, best first, at most `depth`, for each query (a query none of whose
        words occurs in the chunks ranks nothing)."""
        import bm25s

        bm = self._lexical()
        vocab = bm.vocab_dict
        out = []
        for toks in bm25s.tokenize(list(queries), stopwords="en", return_ids=False, show_progress=False):
            ids = [vocab[t] for t in toks if t in vocab]
            if not ids:
                out.append([])
                continue
            sc = bm.get_scores(ids)
            top = np.flatnonzero(sc > 0)
            if len(top) > depth:  # the best `depth` without sorting every chunk
                top = top[np.argpartition(-sc[top], depth - 1)[:depth]]
            out.append([int(i) for i in top[np.lexsort((top, -sc[top]))]])
        return out

    def _hybrid(self, qs: Sequence[str], Q: np.ndarray, k: int) -> list[list[Passage]]:
        """Reciprocal-rank fusion: score = sum over the dense and BM25 rankings of 1 / (RRF_K + rank),
        each ranking `FUSE_DEPTH` deep."""
        depth = min(FUSE_DEPTH, len(self.chunks))
        if min(k, depth) <= 0:
            return [[] for _ in qs]
        _, dense = self._top(Q, depth)
        out = []
        for q_dense, q_lex in zip(dense, self.bm25_ranks(qs, depth)):
            score: dict[int, float] = {}
            for ranking in (q_dense, q_lex):
                for rank, i in enumerate(ranking, 1):
                    score[int(i)] = score.get(int(i), 0.0) + 1.0 / (RRF_K + rank)
            best = sorted(score.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
            out.append([self._passage(i, v) for i, v in best])
        return out


def open_index(path: str | Path) -> Index:
    """The index at `path`, verified whole; RagIndexError listing every problem otherwise."""
    p = Path(path).expanduser()
    if not (p / MANIFEST).is_file():
        raise RagIndexError(f"{p}: not a loralab index (no {MANIFEST}); build one with `loralab rag index`")
    try:
        man = read_json(p / MANIFEST)
        shards = man["shards"]
        if man.get("format") != FORMAT:
            raise ValueError(f"format {man.get('format')!r}, expected {FORMAT}")
    except (ValueError, KeyError, TypeError) as e:
        raise RagIndexError(f"{p}: corrupt index (manifest unreadable: {e})") from None
    problems, chunks, blocks = [], [], []
    for sh in shards:
        cf, ef = p / sh["chunks"], p / sh["emb"]
        bad = [f.name for f in (cf, ef) if not f.is_file()]
        if bad:
            problems.append(f"{', '.join(bad)} missing")
            continue
        for f in (cf, ef):
            if _sha_file(f) != sh["sha256"][f.name]:
                problems.append(f"{f.name}: checksum differs from the manifest (changed or damaged)")
        if problems:
            continue
        try:
            rows = [json.loads(line) for line in cf.read_text(encoding="utf-8").splitlines() if line.strip()]
            X = np.load(ef, allow_pickle=False)
        except (ValueError, OSError) as e:
            problems.append(f"{sh['chunks']}: unreadable ({e})")
            continue
        if len(rows) != sh["rows"] or X.shape != (sh["rows"], sh["dim"]):
            problems.append(f"{sh['chunks']}: {len(rows)} chunks and embeddings {X.shape}, manifest says "
                            f"{sh['rows']} x {sh['dim']}")
            continue
        chunks += rows
        blocks.append(X.astype(np.float32))
    if problems:
        raise RagIndexError(f"{p}: corrupt index, not read: " + "; ".join(problems))
    live = man["sources"]
    keep = [i for i, c in enumerate(chunks) if live.get(c["record"]) == c["digest"]]  # drop superseded chunks
    X = np.concatenate(blocks)[keep] if blocks else np.zeros((0, 1), dtype=np.float32)
    return Index(p, man, [chunks[i] for i in keep], X)


@functools.lru_cache(maxsize=8)
def _cached_index(path: str, mtime_ns: int) -> Index:
    return open_index(path)


def get_index(index: Index | str | Path) -> Index:
    """An Index as given, or the one at a path (opened once per manifest version)."""
    if isinstance(index, Index):
        return index
    p = Path(index).expanduser()
    if not (p / MANIFEST).is_file():
        raise RagIndexError(f"{p}: not a loralab index (no {MANIFEST}); build one with `loralab rag index`")
    return _cached_index(str(p.resolve()), (p / MANIFEST).stat().st_mtime_ns)


# ----------------------------------------------------------------- prompts

def format_prompt(question: str, passages: Sequence[Passage]) -> str:
    """The fixed template: numbered passages with their ids, then the question."""
    body = "\n\n".join(PASSAGE.format(n=i + 1, id=p.id, text=p.text) for i, p in enumerate(passages))
    return TEMPLATE.format(passages=body, question=question)


def augment(messages: list[dict], index: Index | str | Path, k: int = 3,
            embed: Callable | None = None, mode: str = "dense") -> tuple[list[dict], list[str]]:
    """(messages with passages, their source ids): the last user message is the query and
    is rewritten through `format_prompt` with its top-k passages; other messages and the
    input list are left as they are. No user message or k <= 0: unchanged, no sources."""
    msgs = copy.deepcopy(list(messages))
    last = next((i for i in range(len(msgs) - 1, -1, -1) if msgs[i].get("role") == "user"), None)
    if last is None or k <= 0:
        return msgs, []
    question = msgs[last]["content"]
    passages = get_index(index).search(question, k, embed=embed, mode=mode)
    msgs[last] = {**msgs[last], "content": format_prompt(question, passages)}
    return msgs, [p.id for p in passages]


def documents_of(sources: Iterable[str]) -> list[str]:
    """The documents named by source ids (the part before '#')."""
    return [re.sub(r"#[^#]*$", "", s) for s in sources]
