"""Attention over prefix-shared rows that computes only the blocks the row's mask allows.

A prefix-shared row (prefixrows.py) holds a prefix and the branches of its members; a
branch attends to the prefix and causally to itself, never to another branch. The dense
masked attention of such a row costs T x T per head though most of that square is masked:
on IFD scoring of chat records (a ~27-token template shared by ~8 members per 512-token
row) only a third of it is ever used.

Here every row is cut into *segments*: the prefix (queries = keys = the prefix, causal)
and one per branch (queries = the branch, keys = the prefix then the branch). Segments of
similar size are gathered into padded groups and each group is one SDPA call, so a layer
costs a few kernel calls whose area is the used area plus bounded padding. The gather
indices and masks are built once per batch (`RowLayout`) and reused by every layer.

A *stem* is a prefix that every sequence of a call shares (a chat template's system turn,
in front of every record): it runs once per call (`stem_layout` captures), its keys and values
per layer are kept, and every segment of every row attends to them first, as if each row
began with it; the rows hold only what follows the stem and their positions continue
after it.

`use_rows(model)` switches the model to this attention for one forward; the
layout rides along as the keyword `loralab_rows`, which the decoder hands to every
attention call. Without it the function is plain SDPA, so another thread's forward on the
same model is unaffected. Models whose attention this cannot reproduce (soft-capping,
sliding windows shorter than the rows, non-SDPA attention) keep the dense masked path.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

NAME = "loralab_rows"
SLACK = 1.3  # a group's padded area may exceed its segments' own area by this factor


@dataclass
class _Group:
    q_idx: torch.Tensor  # (S, Lq) flat (b * T + t) positions of the queries, padding -> 0
    k_idx: torch.Tensor  # (S, Lk) flat positions of the keys
    src: torch.Tensor  # (N,) real query slots in the (S * Lq) output
    dst: torch.Tensor  # (N,) their flat positions
    allowed: torch.Tensor | None  # (S, 1, Lq, Lk) bool, None = causal with Lq == Lk
    masks: dict = field(default_factory=dict)  # dtype -> additive mask
    T: int = 1  # the batch's padded row length: flat position = row * T + t

    def __post_init__(self):
        self.qb, self.qt = self.q_idx // self.T, self.q_idx % self.T
        self.kb, self.kt = self.k_idx // self.T, self.k_idx % self.T

    def mask(self, dtype: torch.dtype) -> torch.Tensor | None:
        """The additive mask in `dtype`, built once and reused by every layer (None: causal)."""
        if self.allowed is None:
            return None
        if dtype not in self.masks:
            m = torch.zeros(self.allowed.shape, dtype=dtype, device=self.allowed.device)
            self.masks[dtype] = m.masked_fill_(~self.allowed, torch.finfo(dtype).min)
        return self.masks[dtype]


@dataclass
class Stem:
    """A prefix shared by every sequence of a call: its length and, once captured, its keys and
    values per layer, {layer_idx: (k, v)}, each (Hk, length, D) after the rotary embedding."""
    length: int
    kv: dict = field(default_factory=dict)


@dataclass
class RowLayout:
    groups: list[_Group]
    stem: Stem | None = None  # keys and values every segment attends to first
    capture: Stem | None = None  # this forward IS the stem: keep its keys and values


def _segments(rows, T: int, lengths: Sequence[int], stem: int = 0):
    """(queries, keys, fully visible keys or None = causal) per segment, as flat positions.

    With a stem of `stem` tokens, flat positions len(rows) * T + j (j < stem) are its keys,
    which every segment sees in full before its own."""
    segs = []
    ext = list(range(len(rows) * T, len(rows) * T + stem))
    for b, r in enumerate(rows):
        base = b * T
        pre = list(range(base, base + r.prefix))
        if r.prefix:
            segs.append((pre, ext + pre, stem) if stem else (pre, pre, None))
        for m, st in zip(r.members, r.starts):
            n = lengths[m] - r.prefix
            if n > 0:
                br = list(range(base + st, base + st + n))
                segs.append((br, ext + pre + br, stem + r.prefix))
    return segs


def _grouped(segs):
    """Segments of one kind (causal prefixes, or branches) in groups of similar size."""
    segs = sorted(segs, key=lambda s: (len(s[1]), len(s[0])))
    groups, cur = [], []
    for s in segs:
        cand = cur + [s]
        lq = max(len(x[0]) for x in cand)
        lk = max(len(x[1]) for x in cand)
        own = sum(len(x[0]) * len(x[1]) for x in cand)
        if cur and len(cand) * lq * lk > SLACK * own + 4096:
            groups.append(cur)
            cand = [s]
        cur = cand
    if cur:
        groups.append(cur)
    return groups


def _group(segs, causal: bool, T: int, dev) -> _Group:
    S = len(segs)
    lq = max(len(s[0]) for s in segs)
    lk = max(len(s[1]) for s in segs)
    q_idx = torch.zeros((S, lq), dtype=torch.long)
    k_idx = torch.zeros((S, lk), dtype=torch.long)
    src, dst = [], []
    allowed = None if causal else torch.zeros((S, 1, lq, lk), dtype=torch.bool)
    for i, (q, k, p) in enumerate(segs):
        q_idx[i, : len(q)] = torch.as_tensor(q)
        k_idx[i, : len(k)] = torch.as_tensor(k)
        src.extend(range(i * lq, i * lq + len(q)))
        dst.extend(q)
        if not causal:
            n = len(q)
            allowed[i, 0, :, :p] = True  # every query sees the whole prefix
            allowed[i, 0, :n, p: p + n] = torch.ones((n, n), dtype=torch.bool).tril()
    return _Group(q_idx.to(dev), k_idx.to(dev), torch.as_tensor(src, device=dev), torch.as_tensor(dst, device=dev),
                  None if allowed is None else allowed.to(dev), T=T)


def build_layout(rows, T: int, lengths: Sequence[int], dev, stem: Stem | None = None) -> RowLayout:
    """Layout of a batch of prefix-shared rows (padded to T); `lengths[m]` is member m's length
    (after the stem, when the rows follow one)."""
    segs = _segments(rows, T, lengths, stem.length if stem else 0)
    groups = [_group(g, True, T, dev) for g in _grouped([s for s in segs if s[2] is None])]
    groups += [_group(g, False, T, dev) for g in _grouped([s for s in segs if s[2] is not None])]
    return RowLayout(groups, stem=stem)


def stem_layout(stem: Stem, dev) -> RowLayout:
    """The layout of the stem's own forward (one causal row) that captures its keys and values."""
    from .prefixrows import Row

    row = Row(prefix=stem.length, members=[0], starts=[stem.length], length=stem.length)
    lay = build_layout([row], stem.length, [stem.length], dev)
    lay.capture = stem
    return lay


def _with_stem(x: torch.Tensor, ext: torch.Tensor) -> torch.Tensor:
    """(B, Hk, T, D) keys or values and the stem's (Hk, P, D) as one flat (B * T + P, Hk, D)."""
    B, Hk, T, D = x.shape
    return torch.cat([x.transpose(1, 2).reshape(B * T, Hk, D), ext.transpose(0, 1)])


def rows_attention(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None,
                   is_causal=None, loralab_rows: RowLayout | None = None, **kwargs):
    """HF attention-interface function: block attention when a layout is given, else SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if loralab_rows is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, is_causal=is_causal, **kwargs)
    B, H, T, D = query.shape
    Hk = key.shape[1]
    if loralab_rows.capture is not None:  # the stem's own forward: keep its keys and values
        loralab_rows.capture.kv[module.layer_idx] = (key[0], value[0])
    kf = vf = None
    if loralab_rows.stem is not None:  # keys and values: the rows' then the stem's, flat
        ext_k, ext_v = loralab_rows.stem.kv[module.layer_idx]
        kf, vf = _with_stem(key, ext_k), _with_stem(value, ext_v)
    out = query.new_zeros((B, T, H, value.shape[-1]))
    for g in loralab_rows.groups:
        S, lq = g.q_idx.shape
        qg = query[g.qb, :, g.qt].transpose(1, 2)  # advanced indices around ':' -> (S, Lq, H, D) -> (S, H, Lq, D)
        if kf is None:
            kg = key[g.kb, :, g.kt].transpose(1, 2)
            vg = value[g.kb, :, g.kt].transpose(1, 2)
        else:
            kg, vg = kf[g.k_idx].transpose(1, 2), vf[g.k_idx].transpose(1, 2)  # (S, Lk, Hk, D) -> (S, Hk, Lk, D)
        if Hk != H:
            kg = kg.repeat_interleave(H // Hk, dim=1)
            vg = vg.repeat_interleave(H // Hk, dim=1)
        m = g.mask(query.dtype)
        o = F.scaled_dot_product_attention(qg, kg, vg, attn_mask=m, is_causal=m is None, scale=scaling)
        out.view(B * T, H, -1)[g.dst] = o.transpose(1, 2).reshape(S * lq, H, -1)[g.src]
    return out, None


def supported(model) -> bool:
    """Whether this attention reproduces the model's own for rows of any length."""
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    if getattr(model.config, "_attn_implementation", "sdpa") not in ("sdpa", NAME):
        return False
    if getattr(cfg, "attn_logit_softcapping", None):
        return False
    return True


def stem_supported(model) -> bool:
    """Whether a stem can be captured: every attention layer says which layer it is."""
    layers = [m for n, m in model.named_modules() if n.endswith("self_attn")]
    return bool(layers) and all(isinstance(getattr(m, "layer_idx", None), int) for m in layers)


def window(model) -> int | None:
    """The shortest sliding window among the model's layers (None: all layers see everything)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    sw = getattr(cfg, "sliding_window", None)
    types = getattr(cfg, "layer_types", None)
    if sw and (types is None or any("sliding" in t for t in types)):
        return int(sw)
    return None


_registered = False


def _register() -> None:
    global _registered
    if not _registered:
        from transformers import AttentionInterface

        AttentionInterface.register(NAME, rows_attention)
        _registered = True


@contextmanager
def use_rows(model):
    """The model's attention is `rows_attention` inside the block."""
    _register()
    cfg = model.config
    old = cfg._attn_implementation
    subs = [c for c in (getattr(cfg, "text_config", None),) if c is not None]
    try:
        cfg._attn_implementation = NAME
        for c in subs:
            c._attn_implementation = NAME
        yield
    finally:
        cfg._attn_implementation = old
        for c in subs:
            c._attn_implementation = old
