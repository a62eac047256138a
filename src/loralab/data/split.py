"""Seeded train/eval split by document, never by line.

A record's document is `source["doc"]` (falling back to `source["path"]`, then the
record id). Every record of a document lands on the same side, so no passage is
both trained on and evaluated.
"""

from __future__ import annotations

import hashlib
from typing import Iterable

from .records import Record


def doc_key(rec: Record) -> str:
    s = rec.source or {}
    return str(s.get("doc") or s.get("path") or rec.id)


def _draw(doc: str, seed: int) -> float:
    """hash(seed, doc) mapped to [0, 1): a document's fixed place in the seed's order."""
    h = hashlib.sha256(f"{seed}\0{doc}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def is_eval(doc: str, eval_frac: float, seed: int) -> bool:
    """Deterministic: hash(seed, doc) mapped to [0, 1) compared with eval_frac."""
    return _draw(doc, seed) < eval_frac


def eval_docs(docs: Iterable[str], eval_frac: float, seed: int) -> set[str]:
    """The held-out documents of `is_eval`, with one guarantee for small corpora: when there are
    two or more documents and 0 < eval_frac < 1, each side gets at least one (the document
    with the lowest hash is held out, or the one with the highest is kept for training)."""
    draws = {d: _draw(d, seed) for d in set(docs)}
    held = {d for d, x in draws.items() if x < eval_frac}
    if len(draws) >= 2 and 0 < eval_frac < 1 and len(held) in (0, len(draws)):
        order = sorted(draws, key=lambda d: (draws[d], d))
        held = {order[0]} if not held else held - {order[-1]}
    return held


def split(records: Iterable[Record], eval_frac: float = 0.1, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, eval) lists; records of one document stay together."""
    train, ev = [], []
    for r in records:
        (ev if is_eval(doc_key(r), eval_frac, seed) else train).append(r)
    return train, ev
