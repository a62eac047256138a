"""The log-prob engine equals a naive one-example-at-a-time forward."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from loralab import logprobs as L

TEXTS = [
    ("The capital of France is", " Paris."),
    ("Q: What is 2 + 2?\nA:", " 4"),
    ("Once upon a time", " there lived a king who had three daughters, each more curious than the last."),
    ("x", " y"),
    ("In the second quarter, the quarterback threw a", " 35-yard touchdown pass to the tight end."),
]


def naive(model, ctx, cont):
    """Reference: full logits for one example, no padding, fp32 log-softmax."""
    ids = torch.tensor([list(ctx) + list(cont)])
    with torch.no_grad():
        lsm = model(ids).logits[0].float().log_softmax(-1)  # (T, V)
    pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
    return lsm[pos, torch.tensor(cont)].numpy(), lsm[pos]


@pytest.mark.parametrize("bos", [True, False])
@pytest.mark.parametrize("batch_tokens", [16, 64, 4096])
def test_engine_matches_naive_forward(tiny, bos, batch_tokens):
    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=bos) for c, x in TEXTS]
    if bos:
        assert all(c[0] == tiny.tokenizer.bos_token_id for c, _ in enc)
    else:
        assert all(c[0] != tiny.tokenizer.bos_token_id for c, _ in enc)
    got = L.token_logprobs(tiny.model, enc, top_k=5, batch_tokens=batch_tokens, logits_chunk=7)
    for (ctx, cont), r in zip(enc, got):
        ref, lsm = naive(tiny.model, ctx, cont)
        assert r.tokens.tolist() == list(cont)
        np.testing.assert_allclose(r.logprobs, ref, atol=1e-4)
        top = lsm.topk(5, dim=-1)
        np.testing.assert_allclose(r.topk_logprobs, top.values.numpy(), atol=1e-4)
        assert (r.topk_ids[:, 0] == top.indices[:, 0].numpy()).all()


def test_batches_are_padded_minimally():
    lengths = [5, 100, 7, 98, 6, 99]
    batches = L.plan_batches(lengths, batch_tokens=300)
    assert sorted(i for b in batches for i in b) == list(range(6))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 300 or len(b) == 1
    assert {frozenset(b) for b in batches} == {frozenset({1, 3, 5}), frozenset({2, 4, 0})}
    # rows of 20-72 tokens fit one budget, but none is padded to more than PAD_LIMIT x its length
    lengths = list(range(20, 73))
    batches = L.plan_batches(lengths, batch_tokens=4096)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths))) and len(batches) == 4
    assert all(max(lengths[i] for i in b) <= L.PAD_LIMIT * lengths[j] for b in batches for j in b)


def test_encode_pair_moves_trailing_space(tiny):
    a = L.encode_pair(tiny.tokenizer, "The capital of France is ", "Paris", bos=False)
    b = L.encode_pair(tiny.tokenizer, "The capital of France is", " Paris", bos=False)
    assert a == b


def test_left_truncation_keeps_continuation(tiny):
    ctx = list(range(10, 60))
    cont = [5, 6, 7]
    (r,) = L.token_logprobs(tiny.model, [(ctx, cont)], max_length=20)
    assert r.truncated == len(ctx) + len(cont) - 1 - 20
    ref, _ = naive(tiny.model, ctx[r.truncated:], cont)
    np.testing.assert_allclose(r.logprobs, ref, atol=1e-4)
    with pytest.raises(ValueError, match="window"):
        L.token_logprobs(tiny.model, [([1], list(range(30)))], max_length=20)
    with pytest.raises(ValueError, match="empty context"):
        L.token_logprobs(tiny.model, [([], [1, 2])])


def test_greedy_flag(tiny):
    ctx = [1, 504, 3575]
    (r,) = L.token_logprobs(tiny.model, [(ctx, [100])], top_k=1)
    (g,) = L.token_logprobs(tiny.model, [(ctx, [int(r.topk_ids[0, 0])])], top_k=1)
    assert g.greedy is True


@pytest.mark.slow
def test_engine_matches_naive_on_smollm2():
    from loralab import models

    smol32 = models.load("smollm2-135m", device="cpu", dtype="float32")
    enc = [L.encode_pair(smol32.tokenizer, c, x, bos=b) for (c, x), b in zip(TEXTS, [True, False] * 3)]
    got = L.token_logprobs(smol32.model, enc, batch_tokens=128)
    for (ctx, cont), r in zip(enc, got):
        ref, _ = naive(smol32.model, ctx, cont)
        np.testing.assert_allclose(r.logprobs, ref, atol=1e-4)
    # the real model finds the right answer far more likely than a wrong one
    paris, rome = L.score_texts(smol32, [("The capital of France is", " Paris"), ("The capital of France is", " Rome")])
    assert paris.sum > rome.sum + 2


def assert_naive(model, enc, got, div):
    """Log-probs and top-3 equal the naive per-pair forward (fp32, 1e-4); a model's KL to itself is 0."""
    for (ctx, cont), r, d in zip(enc, got, div):
        ref, lsm = naive(model, ctx, cont)
        assert r.tokens.tolist() == list(cont)
        np.testing.assert_allclose(r.logprobs, ref, atol=1e-4)
        np.testing.assert_allclose(r.topk_logprobs, lsm.topk(3, dim=-1).values.numpy(), atol=1e-4)
        np.testing.assert_allclose(d.kl, 0.0, atol=1e-6)


SHARED = [  # multiple choice (one context, several answers) and chat records (one template)
    ("Question: Which gas do plants take in?\nAnswer:", " carbon dioxide"),
    ("Question: Which gas do plants take in?\nAnswer:", " oxygen"),
    ("Question: Which gas do plants take in?\nAnswer:", " nitrogen, mostly from the soil"),
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a prime.<|im_end|>\n"
     "<|im_start|>assistant\n", "7"),
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nName a colour of the sky at dusk."
     "<|im_end|>\n<|im_start|>assistant\n", "Orange, then deep blue."),
    ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n", "7"),
    ("Unrelated", " text with no shared prefix at all."),
]


@pytest.mark.parametrize("row_tokens", [8, 40, 512])
@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_prefix_shared_rows_match_naive_forward(tiny, row_tokens, attn):
    """Shared prefixes computed once per row give the per-pair naive results (fp32, 1e-4)."""
    from loralab.prefixrows import plan_rows

    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in SHARED]
    plan = plan_rows([(c + x)[:-1] for c, x in enc], row_tokens)
    if row_tokens == 512:  # the three choices share a row and their context; the chats share the template
        assert max(len(r.members) for r in plan) >= 3 and sum(r.length for r in plan) < sum(
            len(c) + len(x) - 1 for c, x in enc)
    assert sorted(m for r in plan for m in r.members) == list(range(len(enc)))
    old = tiny.model.config._attn_implementation
    tiny.model.config._attn_implementation = attn
    try:
        got = L.token_logprobs(tiny.model, enc, top_k=3, row_tokens=row_tokens, batch_tokens=64)
        div = L.token_divergence(tiny.model, tiny.model, enc, row_tokens=row_tokens)
    finally:
        tiny.model.config._attn_implementation = old
    assert_naive(tiny.model, enc, got, div)


CHATS = [  # every pair starts with the same system turn: a stem the whole call shares
    ("<|im_start|>system\nYou are a careful assistant who answers briefly.<|im_end|>\n<|im_start|>user\n"
     + q + "<|im_end|>\n<|im_start|>assistant\n", a)
    for q, a in [("Name a prime.", "7"), ("Name a colour of the sky at dusk.", "Orange, then deep blue."),
                 ("", "7"), ("What do plants take in?", "Carbon dioxide, and water through the roots."),
                 ("Say hi.", "Hi!")]
]


@pytest.mark.parametrize("row_tokens", [8, 40, 512])
def test_a_prefix_every_pair_shares_runs_once_and_changes_nothing(tiny, row_tokens, monkeypatch):
    """The stem (the system turn all pairs share) runs once per call; log-probs, top-k and the
    divergence equal the naive per-pair forward (fp32, 1e-4), and the positions run never
    exceed those without the stem (fewer when the pairs need several rows)."""
    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in CHATS]
    rows, _ = L._prepare_rows(tiny.model, enc, None)
    plan, stem = L._plan(tiny.model, rows, True, row_tokens)
    common = 0
    while all(c[common] == enc[0][0][common] for c, _ in enc):
        common += 1
    assert stem == common >= L.STEM_MIN  # the contexts differ after the system turn and 'user'
    stats, calls = {}, []
    real = L._capture_stem
    monkeypatch.setattr(L, "_capture_stem", lambda *a: calls.append(a[2]) or real(*a))
    got = L.token_logprobs(tiny.model, enc, top_k=3, row_tokens=row_tokens, batch_tokens=64, stats=stats)
    assert calls == [stem] and stats["stem_tokens"] == stem
    assert stats["computed_tokens"] == stem + sum(r.length for r in plan)
    monkeypatch.setattr(L, "STEM", False)
    off = {}
    L.token_logprobs(tiny.model, enc, row_tokens=row_tokens, batch_tokens=64, stats=off)
    assert stats["computed_tokens"] <= off["computed_tokens"]  # equal when one row held them all
    if off["rows"] > 1:  # each row after the first ran the system turn again
        assert stats["computed_tokens"] < off["computed_tokens"]
    monkeypatch.setattr(L, "STEM", True)
    div = L.token_divergence(tiny.model, tiny.model, enc, row_tokens=row_tokens)
    assert_naive(tiny.model, enc, got, div)


def test_no_stem_without_a_prefix_all_pairs_share(tiny):
    """One pair that starts otherwise (or a prefix under STEM_MIN) means no stem."""
    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in CHATS + [("Unrelated", " text.")]]
    rows, _ = L._prepare_rows(tiny.model, enc, None)
    assert L._plan(tiny.model, rows, True, 512)[1] == 0
    assert L._stem_length([([1, 2, 3, 4], 3, 1), ([1, 2, 3, 5], 3, 1)]) == 0  # 2 < STEM_MIN
    long = list(range(1, 20))
    assert L._stem_length([(long + [50, 51], 20, 2), (long + [60], 19, 1)]) == 18  # capped: position 18 predicts 60


def test_prefix_rows_layout():
    from loralab.prefixrows import build_batch, plan_rows

    seqs = [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4, 9], [7, 8], [1, 2, 3, 4, 5, 7, 7]]
    rows = plan_rows(seqs, row_tokens=100, min_prefix=4)
    assert [(r.prefix, r.members) for r in rows] == [(4, [0, 3, 1]), (2, [2])]
    r = rows[0]
    assert r.starts == [4, 6, 9] and r.length == 10
    ids, pos, mask = build_batch(seqs, rows, pad_id=0)
    assert ids[0].tolist() == [1, 2, 3, 4, 5, 6, 5, 7, 7, 9]
    assert pos[0].tolist() == [0, 1, 2, 3, 4, 5, 4, 5, 6, 4]
    m = mask[0, 0]
    assert m[6, :4].all() and not m[6, 4:6].any() and m[6, 6] and not m[6, 7:].any()  # branch 2 sees prefix + itself
    assert m[9, :4].all() and not m[9, 4:9].any() and m[9, 9]
    assert r.index(1, 5) == 7 and r.index(2, 2) == 2  # member 3's 6th token; member 1's prefix token
    assert ids[1].tolist()[:2] == [7, 8] and mask[1, 0, 5].tolist() == [False] * 5 + [True] + [False] * 4  # padding
    assert len(plan_rows(seqs, row_tokens=6)) == 4  # no room to share: a row each


def _shared_batch(tiny, row_tokens=512):
    from loralab.prefixrows import build_batch, plan_rows

    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in SHARED]
    seqs = {i: (c + x)[:-1] for i, (c, x) in enumerate(enc)}
    plan = plan_rows([seqs[i] for i in range(len(enc))], row_tokens)
    ids, pos, mask = build_batch(seqs, plan, pad_id=0)
    return seqs, plan, ids, pos, mask


def test_row_layout_covers_every_token_once_and_skips_masked_blocks(tiny):
    """Each non-padding position is a query in exactly one segment, and the groups' area is
    smaller than the dense T x T square of the rows."""
    from loralab import rowattn

    seqs, plan, ids, pos, mask = _shared_batch(tiny)
    T = ids.shape[1]
    lay = rowattn.build_layout(plan, T, {i: len(s) for i, s in seqs.items()}, "cpu")
    dst = torch.cat([g.dst for g in lay.groups]).tolist()
    real = [b * T + t for b, r in enumerate(plan) for t in range(r.length)]
    assert sorted(dst) == real
    area = sum(g.q_idx.numel() * g.k_idx.shape[1] for g in lay.groups)
    assert area < len(plan) * T * T
    for g in lay.groups:  # a group's keys of a query = the dense mask's allowed keys of that query
        if g.allowed is None:
            continue
        S, lq = g.q_idx.shape
        for s in range(S):
            for i in range(lq):
                slot = s * lq + i
                if slot not in set(g.src.tolist()):
                    continue
                qf = int(g.q_idx[s, i])
                b, t = divmod(qf, T)
                keys = {int(k) - b * T for k, ok in zip(g.k_idx[s], g.allowed[s, 0, i]) if ok}
                assert keys == set(torch.nonzero(mask[b, 0, t]).flatten().tolist())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_row_attention_equals_dense_masked_attention(tiny, dtype, monkeypatch):
    """The block attention gives the dense masked SDPA's hidden states (fp32: 1e-5), and runs."""
    from loralab import rowattn
    from loralab.heads import decoder_hidden

    seqs, plan, ids, pos, mask = _shared_batch(tiny)
    lay = rowattn.build_layout(plan, ids.shape[1], {i: len(s) for i, s in seqs.items()}, "cpu")
    calls = []
    real = rowattn.rows_attention
    monkeypatch.setattr(rowattn, "rows_attention", lambda *a, **k: calls.append(k.get("loralab_rows")) or real(*a, **k))
    rowattn._registered = False
    model = copy.deepcopy(tiny.model).to(dtype)  # never cast the shared fixture (bf16 would round it)
    try:
        with torch.inference_mode():
            dense = decoder_hidden(model, ids, mask, pos)
            rows = decoder_hidden(model, ids, mask, pos, layout=lay)
    finally:
        rowattn._registered = False
    assert model.config._attn_implementation == "sdpa"
    assert len(calls) == model.config.num_hidden_layers and all(c is lay for c in calls)
    for b, r in enumerate(plan):  # padding positions are nobody's business
        tol = 1e-5 if dtype == torch.float32 else 3e-2
        torch.testing.assert_close(rows[b, : r.length].float(), dense[b, : r.length].float(), atol=tol, rtol=tol)


def test_rows_are_shared_only_inside_a_sliding_window(tiny):
    """A 4D mask bypasses a model's sliding window, so pairs longer than the window are not put
    in prefix-shared rows (each keeps its own causal row, where the model applies its window)."""
    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in SHARED]
    rows, _ = L._prepare_rows(tiny.model, enc, None)
    assert max(len(r.members) for r in L._plan(tiny.model, rows, True, 512)[0]) >= 3
    cfg = tiny.model.config
    saved = dict(vars(cfg))
    try:
        cfg.sliding_window, cfg.layer_types = 8, ["sliding_attention", "full_attention"]
        assert all(len(r.members) == 1 for r in L._plan(tiny.model, rows, True, 512)[0])
        cfg.sliding_window = 4096  # every pair fits inside the window: sharing as before
        assert max(len(r.members) for r in L._plan(tiny.model, rows, True, 512)[0]) >= 3
    finally:
        for k in set(vars(cfg)) - set(saved):
            delattr(cfg, k)
        for k, v in saved.items():
            setattr(cfg, k, v)
    assert not hasattr(cfg, "sliding_window") and getattr(cfg, "layer_types", None) is None
