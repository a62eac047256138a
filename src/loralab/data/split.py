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


def is_eval(doc: str, eval_frac: float, seed: int) -> bool:
    """Deterministic: hash(seed, doc) mapped to [0, 1) compared with eval_frac."""
    h = hashlib.sha256(f"{seed}\0{doc}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64 < eval_frac


def split(records: Iterable[Record], eval_frac: float = 0.1, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(train, eval) lists; records of one document stay together."""
    train, ev = [], []
    for r in records:
        (ev if is_eval(doc_key(r), eval_frac, seed) else train).append(r)
    return train, ev
