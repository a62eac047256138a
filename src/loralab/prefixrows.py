"""Prefix-shared rows: many token sequences in one row, their common prefix computed once.

A row is a shared prefix followed by the branches of its members:

    [ prefix (P tokens) | branch 1 | branch 2 | ... ]

Every branch token attends to the whole prefix and causally to its own branch, never
to another branch; its position id continues from P, so each member sees exactly the
positions and context it would see alone. Multiple-choice items (one context, several
answers) and chat records (one system template, many prompts) then cost the prefix once
instead of once per member, and rows of short sequences carry no padding.

`plan_rows` groups sequences (sorted so that shared prefixes are adjacent) under a
per-row token budget; `build_batch` turns rows into (ids, position ids, 4D boolean
mask) tensors for a decoder; `Row.index` maps a member's own position to the row's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch


@dataclass
class Row:
    prefix: int  # shared prefix length P
    members: list[int] = field(default_factory=list)  # sequence indices
    starts: list[int] = field(default_factory=list)  # row index of each member's first branch token
    length: int = 0  # tokens in the row

    def index(self, k: int, pos: int) -> int:
        """Row index of position `pos` of the row's k-th member."""
        return pos if pos < self.prefix else self.starts[k] + pos - self.prefix


def _lcp(a: Sequence[int], b: Sequence[int], limit: int) -> int:
    n = min(len(a), len(b), limit)
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def plan_rows(seqs: Sequence[Sequence[int]], row_tokens: int, min_prefix: int = 4) -> list[Row]:
    """Rows of sequences sharing >= `min_prefix` leading tokens, each row <= `row_tokens`
    (a single sequence longer than that gets a row of its own)."""
    order = sorted(range(len(seqs)), key=lambda i: tuple(seqs[i]))
    rows: list[Row] = []
    cur: Row | None = None
    first = None  # the row's first member (sorted order: LCP of the set = LCP(first, last))
    for i in order:
        s = seqs[i]
        if cur is not None:
            p = _lcp(seqs[first], s, min(cur.prefix, len(s)))
            cost = p + sum(len(seqs[m]) - p for m in cur.members) + len(s) - p
            now = cur.prefix + sum(len(seqs[m]) - cur.prefix for m in cur.members)
            # join only when it fits and costs no more than a row of its own: a shorter shared
            # prefix must not undo the sharing the row's members already have
            if p >= min_prefix and cost <= row_tokens and cost <= now + len(s):
                cur.prefix = p
                cur.members.append(i)
                continue
            rows.append(cur)
        cur, first = Row(prefix=len(s), members=[i]), i
    if cur is not None:
        rows.append(cur)
    for r in rows:  # lay out the branches after the final prefix
        off = r.prefix
        for m in r.members:
            r.starts.append(off)
            off += len(seqs[m]) - r.prefix
        r.length = off
    return rows


def build_batch(seqs, rows: Sequence[Row], pad_id: int):
    """(ids (B, T), position ids (B, T), mask (B, 1, T, T) bool, True = may attend).

    `seqs[i]` (a list or a dict) gives member i's tokens.
    Padding positions attend only to themselves (no fully masked query row).
    """
    T = max(r.length for r in rows)
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    seg = torch.full((B, T), -1, dtype=torch.long)  # -1 prefix, k member k's branch, -2 padding
    for b, r in enumerate(rows):
        s0 = seqs[r.members[0]]
        ids[b, : r.prefix] = torch.as_tensor(list(s0[: r.prefix]))
        pos[b, : r.prefix] = torch.arange(r.prefix)
        for k, (m, st) in enumerate(zip(r.members, r.starts)):
            tail = list(seqs[m][r.prefix:])
            ids[b, st: st + len(tail)] = torch.as_tensor(tail, dtype=torch.long)
            pos[b, st: st + len(tail)] = torch.arange(r.prefix, r.prefix + len(tail))
            seg[b, st: st + len(tail)] = k
        seg[b, r.length:] = -2
    causal = torch.ones((T, T), dtype=torch.bool).tril()
    q, k = seg[:, :, None], seg[:, None, :]
    allowed = (k == -1) | (q == k)  # the prefix, or the same branch
    mask = causal & allowed & (q != -2) & (k != -2)
    mask |= torch.eye(T, dtype=torch.bool)  # padding rows keep their diagonal
    return ids, pos, mask[:, None]
