"""THE batched token log-prob engine, used by scoring, evaluation and the inspector.

Given (context, continuation) token-id pairs, return the log-prob of every
continuation token under the model (base or adapter), and optionally the top-k
next-token distribution at each continuation position.

How it stays fast and small:
  * pairs are sorted by length and packed into batches under a token budget
    (`batch_tokens` = rows x padded length), so padding is minimal;
  * the decoder runs once per batch and only the hidden states of continuation
    positions are kept, (N, H);
  * a prefix shared by several pairs runs once per row (prefixrows.py), and a prefix all
    pairs of the call share (a chat template's system turn) once per call (rowattn.Stem);
  * the vocabulary projection + fp32 log-softmax runs over those rows in chunks of
    `logits_chunk`, so at most (logits_chunk, V) fp32 logits exist at a time,
    never (B, T, V).

BOS is the caller's decision: `encode_pair(..., bos=True)` prepends the tokenizer's
BOS id to the context; the engine itself never adds tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
import math
from typing import Callable, Sequence

import numpy as np
import torch

from .fastlora import fast_lora
from .heads import decoder_hidden, logits_fn
from . import rowattn
from .prefixrows import Row, build_batch, plan_rows
from .progress import tracker

Pair = tuple[Sequence[int], Sequence[int]]
ROW_ATTENTION = True  # prefix-shared rows attend block by block (rowattn.py); False: one dense masked SDPA
STEM = True  # a prefix common to every pair of a call runs once per call (rowattn.Stem); False: once per row


@dataclass
class TokenScores:
    tokens: np.ndarray  # (n,) int64 continuation token ids
    logprobs: np.ndarray  # (n,) float32 log p(token | everything before it)
    topk_ids: np.ndarray | None = None  # (n, k) int64 most likely next tokens
    topk_logprobs: np.ndarray | None = None  # (n, k) float32 their log-probs
    truncated: int = 0  # context tokens dropped on the left to fit the window

    @property
    def n(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def sum(self) -> float:
        return float(self.logprobs.astype(np.float64).sum())

    @property
    def mean(self) -> float:
        return self.sum / max(self.n, 1)

    @property
    def greedy(self) -> bool | None:
        """True when every continuation token is the argmax (needs top_k >= 1)."""
        if self.topk_ids is None:
            return None
        return bool((self.topk_ids[:, 0] == self.tokens).all())


def encode_pair(tokenizer, context: str, continuation: str, *, bos: bool) -> tuple[list[int], list[int]]:
    """Token ids of (context, continuation) as lm-evaluation-harness splits them.

    The pair is encoded whole and the continuation is what follows the context's own
    encoding, so merges across the boundary are tokenized as the model saw them. Trailing
    spaces of the context move to the continuation (" Paris" is one token).
    No special tokens are added except a BOS when `bos` is True.
    """
    n_sp = len(context) - len(context.rstrip(" "))
    if n_sp:
        context, continuation = context[:-n_sp], context[-n_sp:] + continuation
    head = [tokenizer.bos_token_id] if bos and tokenizer.bos_token_id is not None else []
    whole = tokenizer.encode(context + continuation, add_special_tokens=False)
    ctx = tokenizer.encode(context, add_special_tokens=False) if context else []
    if whole[: len(ctx)] != ctx:  # boundary merge changed the context: encode apart
        cont = tokenizer.encode(continuation, add_special_tokens=False)
    else:
        cont = whole[len(ctx):]
    return head + ctx, cont


PAD_LIMIT = 1.5  # a row joins a batch only if padded to at most this times its own length


def plan_batches(lengths: Sequence[int], batch_tokens: int, max_rows: int = 256) -> list[list[int]]:
    """Indices grouped into batches of similar length with rows x max_len <= batch_tokens, each
    row padded to at most PAD_LIMIT x its length (padding is computed like any token: 25
    multiple-choice rows of 20-72 tokens padded to 72 doubled the work)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    cur: list[int] = []
    for i in order:
        width = lengths[cur[0]] if cur else lengths[i]  # first row is the longest
        if cur and ((len(cur) + 1) * width > batch_tokens or len(cur) >= max_rows
                    or width > PAD_LIMIT * max(lengths[i], 1)):
            batches.append(cur)
            cur = []
        cur.append(i)
    if cur:
        batches.append(cur)
    return batches


def default_batch_tokens(dev: torch.device) -> int:
    """Tokens per forward when not told: small batches stay in a CPU's caches (measured fastest
    here at 1-2k), a GPU wants many more."""
    return 2048 if dev.type == "cpu" else 16384


def _unwrap(model):
    return getattr(model, "model", model) if hasattr(model, "fingerprint") else model


_logits_fn = logits_fn  # the one head helper (heads.py), under the name callers know
_decoder_hidden = decoder_hidden

# log-softmax rows at a time: a (32, V) fp32 block stays in the CPU's caches, where a whole
# (512, V) chunk at once ran 1.6x slower on the 2-core Xeon of the README (head + softmax)
SOFTMAX_ROWS = 32


def log_softmax_rows(logits: torch.Tensor):
    """(offset, fp32 log-softmax of rows offset..offset + SOFTMAX_ROWS) over a (rows, V) block."""
    for j in range(0, logits.shape[0], SOFTMAX_ROWS):
        yield j, torch.log_softmax(logits[j: j + SOFTMAX_ROWS], dim=-1, dtype=torch.float32)


def _prepare_rows(model, pairs: Sequence[Pair], max_length: int | None):
    """[(input ids, first continuation index, n)] and left-truncation counts, one per pair."""
    window = max_length or getattr(model.config, "max_position_embeddings", None) or 2048
    rows: list[tuple[list[int], int, int]] = []
    trunc: list[int] = []
    for i, (ctx, cont) in enumerate(pairs):
        ctx, cont = list(ctx), list(cont)
        if not ctx:
            raise ValueError(f"pair {i}: empty context; prepend a BOS (encode_pair(bos=True))")
        if len(cont) > window:
            raise ValueError(f"pair {i}: continuation of {len(cont)} tokens exceeds the {window}-token window")
        drop = max(0, len(ctx) + len(cont) - 1 - window)
        drop = min(drop, len(ctx) - 1)
        full = ctx[drop:] + cont
        rows.append((full, len(ctx) - drop, len(cont)))
        trunc.append(drop)
    return rows, trunc


def can_share(model) -> bool:
    """Prefix-shared rows need a 4D mask (not flash-attention-2) and no activated LoRA
    (whose offsets are per row, not per branch)."""
    from .adapters import is_alora

    return "flash" not in str(getattr(model.config, "_attn_implementation", "")) and not is_alora(model)


STEM_MIN = 8  # shortest prefix common to a whole call that runs once for the call (rowattn.Stem)


def _stem_length(rows) -> int:
    """Tokens every pair's decoder input starts with, short of each pair's first predicting
    position (a stem's hidden states are never kept) and of its last input token; 0 when
    under STEM_MIN or fewer than two pairs."""
    if len(rows) < 2:
        return 0
    first = rows[0][0]
    n = min(min(c - 1, len(full) - 2) for full, c, _ in rows)
    for full, _, _ in rows[1:]:
        i = 0
        while i < n and full[i] == first[i]:
            i += 1
        n = i
        if n < STEM_MIN:
            return 0
    return n


def _stem_ok(model) -> bool:
    return STEM and rowattn.supported(model) and rowattn.stem_supported(model)


def _plan(model, rows, share: bool, row_tokens: int, stem_models: Sequence = ()) -> tuple[list[Row], int]:
    """Prefix-shared rows of the pairs' decoder inputs (one pair per row when not sharing), and
    the length of the stem they follow (0: none; the rows then hold the whole inputs). A stem
    needs every model that runs the rows to support one (`stem_models`, default: `model`)."""
    inputs = [r[0][:-1] for r in rows]
    w = rowattn.window(model)  # a 4D mask bypasses sliding windows: share only within one
    if share and can_share(model) and (w is None or max(map(len, inputs), default=0) <= w):
        stem = _stem_length(rows)  # models are checked only when the pairs have a stem
        if stem and not all(_stem_ok(m) for m in (stem_models or (model,))):
            stem = 0
        # after a stem, sequences share a row even with no prefix of their own: each attends to the
        # stem and itself, and rows of several sequences carry less padding than one row each
        return plan_rows([x[stem:] for x in inputs], row_tokens, min_prefix=0 if stem else 4), stem
    return [Row(prefix=len(x), members=[i], starts=[len(x)], length=len(x)) for i, x in enumerate(inputs)], 0


def _capture_stem(model, rows, stem: int, dev) -> rowattn.Stem | None:
    """Run the call's stem once and keep its keys and values per layer (None without a stem)."""
    if not stem:
        return None
    st = rowattn.Stem(stem)
    ids = torch.tensor([rows[0][0][:stem]], device=dev)
    decoder_hidden(model, ids, None, torch.arange(stem, device=dev)[None], layout=rowattn.stem_layout(st, dev))
    return st


def _continuation_hidden(model, rows, plan: Sequence[Row], pad_id: int, dev, stem: rowattn.Stem | None = None):
    """Decoder hidden states of one batch's continuation positions: (N, H), targets (N,), spans.
    With a `stem` (captured), the rows hold what follows it."""
    P = stem.length if stem else 0
    if not P and all(len(r.members) == 1 for r in plan):  # plain padded rows: causal kernels, 2D mask
        T = max(r.length for r in plan)
        ids = torch.full((len(plan), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(plan), T), dtype=torch.long)
        for b, r in enumerate(plan):
            seq = rows[r.members[0]][0][:-1]
            ids[b, : len(seq)] = torch.tensor(seq)
            mask[b, : len(seq)] = 1
        hidden = decoder_hidden(model, ids.to(dev), mask.to(dev))  # (B, T, H)
    else:
        seqs = {i: rows[i][0][P:-1] for r in plan for i in r.members}  # this batch's inputs only
        ids, pos, mask = build_batch(seqs, plan, pad_id)
        layout = None
        if P or (ROW_ATTENTION and rowattn.supported(model)):  # a stem needs the block attention
            layout = rowattn.build_layout(plan, ids.shape[1], {i: len(s) for i, s in seqs.items()}, dev, stem)
        hidden = decoder_hidden(model, ids.to(dev), mask.to(dev), (pos + P).to(dev), layout=layout)
    # keep only continuation positions: position j predicts token j+1
    sel_r, sel_t, targets, spans = [], [], [], []
    for b, r in enumerate(plan):
        for k, i in enumerate(r.members):
            full, c, n = rows[i]
            sel_r.append(torch.full((n,), b))
            sel_t.append(torch.tensor([r.index(k, p - P) for p in range(c - 1, c - 1 + n)], dtype=torch.long))
            targets.append(torch.tensor(full[c: c + n]))
            spans.append((i, n))
    h = hidden[torch.cat(sel_r).to(dev), torch.cat(sel_t).to(dev)]  # (N, H)
    return h, torch.cat(targets).to(dev), spans


@torch.inference_mode()
def token_logprobs(
    model,
    pairs: Sequence[Pair],
    *,
    top_k: int = 0,
    batch_tokens: int | None = None,
    logits_chunk: int = 512,
    max_length: int | None = None,
    pad_id: int = 0,
    share_prefix: bool = True,
    row_tokens: int = 512,
    progress: bool | str = False,
    stats: dict | None = None,
) -> list[TokenScores]:
    """Per-token log-probs of each continuation given its context, in input order.

    model        an HF causal LM (or PEFT-wrapped one, or a models.Loaded)
    pairs        [(context_ids, continuation_ids)]; context must hold >= 1 token
    top_k        also return the k most likely next tokens at each continuation position
    batch_tokens padded tokens per forward (rows x length): the memory knob (default: by device)
    logits_chunk rows of fp32 logits materialised at once: (logits_chunk, V)
    max_length   window; longer pairs lose context tokens on the left (default: model's)
    share_prefix compute a prefix shared by several pairs (a multiple-choice context, a
                 chat template) once per row of <= `row_tokens` (prefixrows.py), and a prefix
                 that all pairs share (a chat template's system turn) once per call
                 (rowattn.Stem); results equal those of separate rows
    stats        if given, receives the work done: `pair_tokens` (decoder positions that
                 separate passes would run), `computed_tokens` (positions actually run,
                 padding excluded), `stem_tokens` (of those, the prefix all pairs share,
                 run once), `padded_tokens`, `rows`, `batches`
    """
    model = _unwrap(model)
    dev = next(model.parameters()).device
    rows, trunc = _prepare_rows(model, pairs, max_length)
    plan, stem_len = _plan(model, rows, share_prefix, row_tokens)
    batches = plan_batches([r.length for r in plan], batch_tokens or default_batch_tokens(dev))
    if stats is not None:
        stats.update(pair_tokens=sum(len(r[0]) - 1 for r in rows),
                     computed_tokens=stem_len + sum(r.length for r in plan), stem_tokens=stem_len,
                     padded_tokens=stem_len + sum(len(b) * max(plan[j].length for j in b) for b in batches),
                     rows=len(plan), batches=len(batches))
    results: list[TokenScores | None] = [None] * len(rows)
    logits_of = logits_fn(model, fp32=False)
    with tracker(progress, "log-probs", sum(r.length for r in plan), "tokens") as advance, fast_lora(model):
        stem = _capture_stem(model, rows, stem_len, dev)
        for batch in batches:
            part = [plan[j] for j in batch]
            h, tgt, spans = _continuation_hidden(model, rows, part, pad_id, dev, stem)  # (N, H), (N,)
            lp_parts, ki_parts, kv_parts = [], [], []
            for s in range(0, h.shape[0], logits_chunk):
                logits = logits_of(h[s: s + logits_chunk])  # (chunk, V) in the head's dtype
                for j, lsm in log_softmax_rows(logits):  # (<= SOFTMAX_ROWS, V) fp32
                    lp_parts.append(lsm.gather(1, tgt[s + j: s + j + lsm.shape[0], None])[:, 0])
                    if top_k:
                        v, k = lsm.topk(top_k, dim=-1)
                        kv_parts.append(v)
                        ki_parts.append(k)
            lp = torch.cat(lp_parts).cpu().numpy()
            tg = tgt.cpu().numpy()
            kv = torch.cat(kv_parts).cpu().numpy() if top_k else None
            ki = torch.cat(ki_parts).cpu().numpy() if top_k else None
            off = 0
            for i, n in spans:
                results[i] = TokenScores(
                    tokens=tg[off: off + n].astype(np.int64),
                    logprobs=lp[off: off + n].astype(np.float32),
                    topk_ids=ki[off: off + n].astype(np.int64) if top_k else None,
                    topk_logprobs=kv[off: off + n].astype(np.float32) if top_k else None,
                    truncated=trunc[i],
                )
                off += n
            advance(sum(r.length for r in part))
    return results  # type: ignore[return-value]


@torch.inference_mode()
def next_token_logprobs(model, context: Sequence[int], continuation: Sequence[int], *, pad_id: int = 0,
                        max_length: int | None = None) -> torch.Tensor:
    """(n, V) fp32 log-softmax of the full next-token distribution at each position that predicts a
    continuation token (the positions `token_logprobs` scores): one forward, every number a view
    of the same distribution (a token's log-prob, the top-k, any candidate's log-prob)."""
    model = _unwrap(model)
    dev = next(model.parameters()).device
    rows, _ = _prepare_rows(model, [(list(context), list(continuation))], max_length)
    plan, _ = _plan(model, rows, False, max(512, rows[0][2] + len(rows[0][0])))
    logits_of = logits_fn(model, fp32=False)
    with fast_lora(model):
        h, _, _ = _continuation_hidden(model, rows, plan, pad_id, dev)  # (n, H)
        return torch.cat([lsm for _, lsm in log_softmax_rows(logits_of(h))])


def kl_js(lp: torch.Tensor, lq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(KL(p || q), JS(p, q)) per row, in nats, of (rows, V) fp32 log-probs."""
    lm = torch.logaddexp(lp, lq) - math.log(2.0)  # log of the mixture (p + q) / 2
    return _kl(lp, lq), 0.5 * (_kl(lp, lm) + _kl(lq, lm))


def score_texts(
    loaded, pairs: Sequence[tuple[str, str]], *, bos: bool = True, **kw
) -> list[TokenScores]:
    """String convenience: encode each (context, continuation) with `encode_pair`, then score."""
    tok = loaded.tokenizer
    enc = [encode_pair(tok, c, x, bos=bos) for c, x in pairs]
    kw.setdefault("pad_id", tok.pad_token_id or 0)
    return token_logprobs(loaded.model, enc, **kw)


@dataclass
class Divergence:
    kl: np.ndarray  # (n,) float32 KL(p || q) in nats at each continuation position
    js: np.ndarray  # (n,) float32 Jensen-Shannon divergence in nats (<= ln 2)


@torch.inference_mode()
def token_divergence(
    model_p,
    model_q,
    pairs: Sequence[Pair],
    *,
    p_context: Callable[[], object] | None = None,
    q_context: Callable[[], object] | None = None,
    batch_tokens: int | None = None,
    logits_chunk: int = 256,
    max_length: int | None = None,
    pad_id: int = 0,
    share_prefix: bool = True,
    row_tokens: int = 512,
    progress: bool | str = False,
    p_hidden: dict | None = None,
) -> list[Divergence]:
    """Per-position KL(p || q) and JS(p, q) between two models' full next-token distributions.

    Positions are those that predict each continuation token, exactly as in
    `token_logprobs`. `model_p` and `model_q` may be the same object with different
    contexts, e.g. a PEFT model with `p_context=model.disable_adapter` (base) and no
    q_context (adapter): no second copy of the weights. Both distributions exist only
    as (logits_chunk, V) fp32 blocks.

    `p_hidden`, a dict the caller keeps across calls that share `model_p` and its context
    (e.g. the base against several adapters): p's decoder states of each batch are stored
    under the batch's exact layout and tokens, and a later call with the same batch reuses
    them instead of running `model_p` again (the same numbers: same inputs, same kernels).
    """
    import contextlib

    model_p, model_q = _unwrap(model_p), _unwrap(model_q)
    dev = next(model_p.parameters()).device
    rows, _ = _prepare_rows(model_p, pairs, max_length)
    plan, stem_len = _plan(model_p, rows, share_prefix and can_share(model_q), row_tokens,
                           stem_models=(model_p, model_q))
    out: list[Divergence | None] = [None] * len(rows)
    sides = [(model_p, p_context or contextlib.nullcontext), (model_q, q_context or contextlib.nullcontext)]
    stems: dict[int, rowattn.Stem | None] = {}  # each side's stem, captured in its own context on first use
    with tracker(progress, "divergence", sum(r.length for r in plan), "tokens") as advance, \
            fast_lora(model_p), fast_lora(model_q):
        for batch in plan_batches([r.length for r in plan], batch_tokens or default_batch_tokens(dev)):
            part = [plan[j] for j in batch]
            key = None if p_hidden is None else (stem_len,) + tuple(  # this batch's exact layout and tokens
                (r.prefix, tuple(r.starts), tuple((i, tuple(rows[i][0]), rows[i][1]) for i in r.members)) for r in part)
            hs = []
            for side, (model, ctx) in enumerate(sides):
                if side == 0 and p_hidden is not None and key in p_hidden:
                    h, spans = p_hidden[key]
                else:
                    with ctx():
                        if side not in stems:
                            stems[side] = _capture_stem(model, rows, stem_len, dev)
                        h, _, spans = _continuation_hidden(model, rows, part, pad_id, dev, stems[side])  # (N, H)
                    if side == 0 and p_hidden is not None:
                        p_hidden[key] = (h, spans)
                hs.append(h)
            kl_parts, js_parts = [], []
            for s in range(0, hs[0].shape[0], logits_chunk):
                logits = []
                for (model, ctx), h in zip(sides, hs):
                    with ctx():  # the head may carry an adapter too
                        logits.append(logits_fn(model, fp32=False)(h[s: s + logits_chunk]))
                for (_, lp), (_, lq) in zip(log_softmax_rows(logits[0]), log_softmax_rows(logits[1])):
                    kl, js = kl_js(lp, lq)  # lp, lq: (<= SOFTMAX_ROWS, V) fp32
                    kl_parts.append(kl)
                    js_parts.append(js)
            kl = torch.cat(kl_parts).cpu().numpy()
            js = torch.cat(js_parts).cpu().numpy()
            off = 0
            for i, n in spans:
                out[i] = Divergence(kl=kl[off: off + n].astype(np.float32), js=js[off: off + n].astype(np.float32))
                off += n
            advance(sum(r.length for r in part))
    return out  # type: ignore[return-value]


def _kl(lp: torch.Tensor, lq: torch.Tensor) -> torch.Tensor:
    """(rows,) KL(p || q) from (rows, V) log-probs; 0 * log 0 counts as 0."""
    p = lp.exp()
    return torch.where(p > 0, p * (lp - lq), torch.zeros_like(p)).sum(-1).clamp_min(0.0)
