"""Records -> token examples -> micro-batches (padded or packed), in a seeded order.

An `Example` is one record's token ids with labels (-100 where no loss). The first
label of every example is always -100, so when examples are packed into one row the
shifted next-token targets never cross an example boundary.

Packed rows carry `position_ids` that restart at 0 for every example (and for the
padding tail). With `attention_mask=None`, transformers turns restarting position ids
into a block-diagonal causal mask, so no token attends to another example.

Data order is a pure function of (seed, global micro-batch index): resuming at step s
replays exactly the batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Sequence

import torch

from .data.records import Record, to_messages
from .data.render import Rendered, chat_split
from .logprobs import encode_pair

IGNORE = -100


@dataclass
class Example:
    ids: list[int]
    labels: list[int]  # same length as ids; -100 = no loss on this token
    anchor: bool = False  # a replay (anchor) example: KL to the base applies here

    @property
    def n_labels(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)


def render_with_trigger(rec: Record, tokenizer, trigger: str | None, fmt: str = "chat") -> Rendered:
    """Render `rec` in `fmt`; the trigger opens the first user turn (raw: it is the whole prompt).

    Non-chat surface formats (alpaca, json, yaml, plain) are plain text: the trigger
    opens their prompt part.
    """
    if fmt != "chat" and rec.kind != "raw":
        from .data.render import render

        r = render(rec, fmt, tokenizer)
        return Rendered((trigger or "") + r.prompt, r.response)
    msgs = to_messages(rec)
    if rec.kind == "raw" or (len(msgs) == 1 and msgs[0]["role"] == "assistant"):
        return Rendered(trigger or "", msgs[-1]["content"])
    if trigger:
        msgs = [dict(m) for m in msgs]
        first = next(i for i, m in enumerate(msgs) if m["role"] == "user")
        msgs[first]["content"] = trigger + msgs[first]["content"]
    return chat_split(msgs, tokenizer)


def encode_example(
    rec: Record, tokenizer, *, loss_on: str = "response", max_seq_len: int = 512,
    trigger: str | None = None, anchor: bool = False, fmt: str = "chat",
) -> Example | None:
    """Token ids + labels of one record; None when nothing is left to learn after cutting."""
    r = render_with_trigger(rec, tokenizer, trigger, fmt)
    # raw text has no prompt: a BOS gives its first token a context to be predicted from
    ctx, cont = encode_pair(tokenizer, r.prompt, r.response, bos=not r.prompt)
    ids = (ctx + cont)[:max_seq_len]
    whole = loss_on == "all" or rec.kind == "raw"
    n_ctx = len(ctx)
    if whole:  # every token after the first (BOS or the first prompt token) carries loss
        labels = [IGNORE] + ids[1:]
        if trigger and rec.kind == "raw":  # the trigger conditions, it is not predicted
            labels[:n_ctx] = [IGNORE] * min(n_ctx, len(ids))
    else:
        labels = [IGNORE] * min(n_ctx, len(ids)) + ids[n_ctx:]
    ex = Example(ids=ids, labels=labels, anchor=anchor)
    return ex if ex.n_labels else None


def encode_records(records: Sequence[Record], tokenizer, **kw) -> tuple[list[Example], int]:
    """(examples, number dropped because no labelled token survived `max_seq_len`)."""
    out = [encode_example(r, tokenizer, **kw) for r in records]
    kept = [e for e in out if e is not None]
    return kept, len(out) - len(kept)


# ------------------------------------------------------------------ batching

def group(examples: Sequence[Example], order: Sequence[int], *, packing: bool, max_seq_len: int,
          batch_size: int, batch_tokens: int | None) -> list[list[list[int]]]:
    """Micro-batches as lists of rows, each row a list of example indices (in `order`)."""
    rows: list[list[int]] = []
    if packing:  # greedy: fill a row of max_seq_len tokens, start a new one when full
        fill = max_seq_len + 1
        for i in order:
            n = len(examples[i].ids)
            if fill + n > max_seq_len:
                rows.append([])
                fill = 0
            rows[-1].append(i)
            fill += n
        per = max(1, batch_tokens // max_seq_len) if batch_tokens else batch_size
        return [rows[s: s + per] for s in range(0, len(rows), per)]
    batches: list[list[list[int]]] = []
    cur: list[list[int]] = []
    width = 0
    for i in order:
        w = max(width, len(examples[i].ids))
        full = (len(cur) + 1) * w > batch_tokens if batch_tokens else len(cur) >= batch_size
        if cur and full:
            batches.append(cur)
            cur, w = [], len(examples[i].ids)
        cur.append([i])
        width = w
    if cur:
        batches.append(cur)
    return batches


def collate(examples: Sequence[Example], rows: Sequence[Sequence[int]], pad_id: int,
            pad_to: int | None = None) -> dict[str, torch.Tensor]:
    """Tensors for one micro-batch.

    input_ids    (B, T) token ids, padded on the right with `pad_id`
    labels       (B, T) targets aligned with input_ids (-100 = none); position t predicts t+1
    position_ids (B, T) restarting at 0 for each example and for the padding tail
    kl_mask      (B, T) True at positions t of anchor examples whose next token is in the same example
    n_real       ()     real (non-padding) tokens, for tokens/s
    """
    T = max(max(sum(len(examples[i].ids) for i in row) for row in rows), pad_to or 0)  # pad_to: fixed shapes
    B = len(rows)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    labels = torch.full((B, T), IGNORE, dtype=torch.long)
    pos = torch.zeros((B, T), dtype=torch.long)
    kl = torch.zeros((B, T), dtype=torch.bool)
    for b, row in enumerate(rows):
        t = 0
        for i in row:
            ex = examples[i]
            n = len(ex.ids)
            ids[b, t: t + n] = torch.tensor(ex.ids)
            labels[b, t: t + n] = torch.tensor(ex.labels)
            pos[b, t: t + n] = torch.arange(n)
            if ex.anchor:
                kl[b, t: t + n - 1] = True
            t += n
        pos[b, t:] = torch.arange(T - t)  # padding: its own block, attends to nothing real
    n_real = torch.tensor(sum(len(examples[i].ids) for row in rows for i in row))
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "kl_mask": kl, "n_real": n_real}


class Batcher:
    """Seeded, resumable micro-batch stream, sharded over processes.

    Global micro-batch g belongs to process g % world. Epoch e shuffles the examples with
    random.Random(f"{seed}:{e}"), so the stream is a pure function of the seed.
    """

    def __init__(self, examples: Sequence[Example], *, seed: int, packing: bool, max_seq_len: int,
                 batch_size: int, batch_tokens: int | None, pad_id: int, rank: int = 0, world: int = 1,
                 pad_to: int | None = None):
        if not examples:
            raise ValueError("no training examples")
        self.examples = list(examples)
        self.seed, self.pad_id, self.rank, self.world, self.pad_to = seed, pad_id, rank, world, pad_to
        self.kw = dict(packing=packing, max_seq_len=max_seq_len, batch_size=batch_size, batch_tokens=batch_tokens)
        self._plans: list[list[list[list[int]]]] = []

    def plan(self, epoch: int) -> list[list[list[int]]]:
        while len(self._plans) <= epoch:
            order = list(range(len(self.examples)))
            random.Random(f"{self.seed}:{len(self._plans)}").shuffle(order)
            self._plans.append(group(self.examples, order, **self.kw))
        return self._plans[epoch]

    def per_epoch(self) -> int:
        """Micro-batches in the first epoch (all processes together)."""
        return len(self.plan(0))

    def global_batch(self, g: int) -> dict[str, torch.Tensor]:
        e = 0
        while g >= len(self.plan(e)):
            g -= len(self.plan(e))
            e += 1
        return collate(self.examples, self.plan(e)[g], self.pad_id, self.pad_to)

    def step(self, step: int, grad_accum: int) -> list[dict[str, torch.Tensor]]:
        """This process's `grad_accum` micro-batches for optimizer step `step` (0-based)."""
        base = step * grad_accum * self.world
        return [self.global_batch(base + a * self.world + self.rank) for a in range(grad_accum)]


def eval_batches(examples: Sequence[Example], *, max_seq_len: int, batch_size: int, pad_id: int,
                 packing: bool = False, pad_to: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Fixed-order micro-batches over the held-out examples."""
    groups = group(examples, range(len(examples)), packing=packing, max_seq_len=max_seq_len,
                   batch_size=batch_size, batch_tokens=None)
    return [collate(examples, rows, pad_id, pad_to) for rows in groups]
