"""Packing and the chunked losses against plain references on the tiny model (fp32)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from loralab.data.records import Record
from loralab.losses import chunked_ce_sum, make_loss
from loralab.heads import logits_fn
from loralab.packing import IGNORE, Batcher, collate, encode_example, encode_records


def _records():
    return [
        Record(kind="qa", question="Who kicked the field goal?", answer="Janikowski, from 40 yards."),
        Record(kind="raw", text="The Raiders scored a touchdown in the second quarter."),
        Record(kind="instruction", instruction="Summarise the game.", output="A close win for Oakland."),
        Record(kind="chat", messages=[{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello!"}]),
    ]


def _per_token_nll(model, ids, labels, position_ids=None, attention_mask=None):
    """Plain HF forward: (B, T-1) fp32 NLL of each next token (0 where unlabelled)."""
    with torch.no_grad():
        logits = model(input_ids=ids, position_ids=position_ids, attention_mask=attention_mask,
                       use_cache=False).logits.float()  # a cache turns packed-sequence masking off
    tgt = labels[:, 1:]
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), tgt.clamp(min=0), reduction="none")
    return nll * (tgt != IGNORE)


def test_labels_mask_prompt_and_keep_response(tiny):
    tok = tiny.tokenizer
    ex = encode_example(_records()[0], tok, loss_on="response")
    n_prompt = next(i for i, x in enumerate(ex.labels) if x != IGNORE)
    assert tok.decode(ex.ids[n_prompt:]) == "Janikowski, from 40 yards.<|im_end|>\n"
    assert ex.labels[n_prompt:] == ex.ids[n_prompt:]
    assert all(x == IGNORE for x in ex.labels[:n_prompt])
    raw = encode_example(_records()[1], tok, loss_on="response")
    assert raw.ids[0] == tok.bos_token_id and raw.labels == [IGNORE] + raw.ids[1:]
    full = encode_example(_records()[0], tok, loss_on="all")
    assert full.labels == [IGNORE] + full.ids[1:]
    cut = encode_example(_records()[0], tok, max_seq_len=n_prompt)  # nothing left to learn
    assert cut is None


def test_trigger_opens_user_turn_and_conditions_raw(tiny):
    tok = copy.deepcopy(tiny.tokenizer)
    tok.add_tokens(["<|use_lora_sport|>"], special_tokens=True)
    tid = tok.convert_tokens_to_ids("<|use_lora_sport|>")
    ex = encode_example(_records()[0], tok, trigger="<|use_lora_sport|>")
    text = tok.decode(ex.ids)
    assert "<|im_start|>user\n<|use_lora_sport|>Who kicked" in text
    raw = encode_example(_records()[1], tok, trigger="<|use_lora_sport|>")
    assert raw.ids[0] == tid and raw.labels[0] == IGNORE and raw.labels[1:] == raw.ids[1:]


def test_packed_row_equals_examples_run_separately(tiny):
    """No attention leaks across packed examples: per-token loss identical to separate runs."""
    model, tok = tiny.model, tiny.tokenizer
    exs, _ = encode_records(_records(), tok)
    packed = collate(exs, [[0, 1, 2, 3]], tok.pad_token_id)
    assert packed["input_ids"].shape[0] == 1
    got = _per_token_nll(model, packed["input_ids"], packed["labels"], packed["position_ids"])[0]
    t = 0
    for ex in exs:
        ids, labels = torch.tensor([ex.ids]), torch.tensor([ex.labels])
        ref = _per_token_nll(model, ids, labels)[0]
        n = len(ex.ids)
        torch.testing.assert_close(got[t: t + n - 1], ref, atol=1e-5, rtol=0)
        assert got[t + n - 1] == 0 if t + n - 1 < got.shape[0] else True  # boundary carries no loss
        t += n
    # the same packed row through the training loss equals the mean of the separate losses
    loss, stats = make_loss(chunk=7)(model, packed)
    ref_sum = sum(_per_token_nll(model, torch.tensor([e.ids]), torch.tensor([e.labels])).sum() for e in exs)
    assert int(stats["tokens"]) == sum(e.n_labels for e in exs)
    torch.testing.assert_close(loss, ref_sum / stats["tokens"], atol=1e-5, rtol=0)


def test_padded_batch_equals_hf_loss_and_grads(tiny):
    """Chunked CE (with checkpointed chunks) == HF's own loss, value and gradient."""
    model, tok = copy.deepcopy(tiny.model), tiny.tokenizer
    exs, _ = encode_records(_records(), tok)
    batch = collate(exs, [[0], [1], [2], [3]], tok.pad_token_id)
    mask = (batch["position_ids"] == torch.arange(batch["input_ids"].shape[1])).long()  # real tokens
    model.zero_grad()
    ref = model(input_ids=batch["input_ids"], attention_mask=mask, labels=batch["labels"]).loss
    ref.backward()
    ref_grad = model.model.layers[0].mlp.up_proj.weight.grad.clone()
    model.zero_grad()
    loss, _ = make_loss(chunk=5)(model, batch)
    loss.backward()
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(model.model.layers[0].mlp.up_proj.weight.grad, ref_grad, atol=1e-6, rtol=1e-4)


def test_chunked_ce_independent_of_chunk(tiny):
    model = tiny.model
    h = torch.randn(37, model.config.hidden_size)
    t = torch.randint(0, model.config.vocab_size, (37,))
    logits_of = logits_fn(model)
    with torch.no_grad():
        ref = F.cross_entropy(logits_of(h), t, reduction="sum")
        for c in (1, 8, 37, 1024):
            torch.testing.assert_close(chunked_ce_sum(logits_of, h, t, c), ref, atol=1e-4, rtol=1e-6)


def test_kl_is_zero_for_fresh_adapter_and_matches_reference(tiny):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules="all-linear"))
    tok = tiny.tokenizer
    exs, _ = encode_records(_records(), tok, anchor=True)
    batch = collate(exs, [[0, 1], [2, 3]], tok.pad_token_id)
    fn = make_loss(chunk=16, kl_weight=1.0)
    _, stats = fn(model, batch)
    assert float(stats["kl_sum"]) == pytest.approx(0.0, abs=1e-6)  # B = 0: adapter == base
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    _, stats = fn(model, batch)
    with torch.no_grad():  # reference: full logits, both ways
        kw = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
        la = torch.log_softmax(model(**kw).logits.float()[:, :-1], -1)
        with model.disable_adapter():
            lb = torch.log_softmax(model(**kw).logits.float()[:, :-1], -1)
        m = batch["kl_mask"][:, :-1]
        ref = (lb.exp() * (lb - la)).sum(-1)[m].sum()
    assert float(stats["kl_sum"]) > 1e-3
    torch.testing.assert_close(stats["kl_sum"], ref, atol=1e-4, rtol=1e-5)
    assert int(stats["kl_tokens"]) == sum(len(e.ids) - 1 for e in exs)


def test_batcher_is_seeded_and_sharded(tiny):
    exs, _ = encode_records(_records() * 3, tiny.tokenizer)
    kw = dict(packing=False, max_seq_len=64, batch_size=2, batch_tokens=None, pad_id=2)
    a, b = Batcher(exs, seed=1, **kw), Batcher(exs, seed=1, **kw)
    for s in range(5):  # crosses epoch boundaries (6 micro-batches per epoch)
        for x, y in zip(a.step(s, 2), b.step(s, 2)):
            assert torch.equal(x["input_ids"], y["input_ids"])
    r0 = Batcher(exs, seed=1, rank=0, world=2, **kw)
    r1 = Batcher(exs, seed=1, rank=1, world=2, **kw)
    assert torch.equal(r0.step(0, 1)[0]["input_ids"], a.global_batch(0)["input_ids"])
    assert torch.equal(r1.step(0, 1)[0]["input_ids"], a.global_batch(1)["input_ids"])
    c = Batcher(exs, seed=2, **kw)
    assert any(not torch.equal(a.global_batch(g)["input_ids"], c.global_batch(g)["input_ids"]) for g in range(6))


def test_group_respects_row_and_token_budgets():
    from loralab.packing import Example, group

    exs = [Example(ids=[1] * n, labels=[IGNORE] + [1] * (n - 1)) for n in (5, 9, 3, 7, 2, 8, 4)]
    order = list(range(len(exs)))
    packed = group(exs, order, packing=True, max_seq_len=10, batch_size=2, batch_tokens=None)
    rows = [r for b in packed for r in b]
    assert sorted(i for r in rows for i in r) == order  # every example exactly once, in order
    assert all(sum(len(exs[i].ids) for i in r) <= 10 for r in rows) and all(len(b) <= 2 for b in packed)
    assert rows == [[0], [1], [2, 3], [4, 5], [6]]  # greedy fill in order: 5 | 9 | 3+7 | 2+8 | 4
    by_tokens = group(exs, order, packing=False, max_seq_len=10, batch_size=99, batch_tokens=20)
    for b in by_tokens:
        assert len(b) * max(len(exs[r[0]].ids) for r in b) <= 20 or len(b) == 1
    assert sorted(r[0] for b in by_tokens for r in b) == order
    by_rows = group(exs, order, packing=False, max_seq_len=10, batch_size=3, batch_tokens=None)
    assert [len(b) for b in by_rows] == [3, 3, 1]


@pytest.mark.parametrize("wdtype", [torch.float32, torch.bfloat16])
def test_fused_linear_ce_equals_reference_value_and_gradient(wdtype):
    from loralab.losses import FusedLinearCE

    g = torch.Generator().manual_seed(0)
    W = torch.randn(300, 24, generator=g).to(wdtype)  # frozen head (V, H)
    h = torch.randn(37, 24, generator=g, requires_grad=True)
    t = torch.randint(0, 300, (37,), generator=g)
    ref = F.cross_entropy((h.to(wdtype) @ W.t()).float(), t, reduction="sum")
    (ref * 0.37).backward()
    ref_grad = h.grad.clone()
    for c in (1, 8, 37, 1024):
        h.grad = None
        got = FusedLinearCE.apply(h, W, t, c)
        (got * 0.37).backward()
        tol = 1e-5 if wdtype == torch.float32 else 2e-2
        torch.testing.assert_close(got, ref, atol=tol * 37, rtol=tol)
        torch.testing.assert_close(h.grad, ref_grad, atol=tol, rtol=tol)


def test_lora_loss_uses_fused_head_and_equals_hf(tiny):
    """Frozen base + LoRA: the fused CE path gives HF's loss and the same adapter gradients."""
    from peft import LoraConfig, get_peft_model

    from loralab.losses import plain_head_weight

    model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules="all-linear"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    assert plain_head_weight(model) is not None
    tok = tiny.tokenizer
    exs, _ = encode_records(_records(), tok)
    batch = collate(exs, [[0, 1], [2, 3]], tok.pad_token_id)
    lora = [p for n, p in model.named_parameters() if p.requires_grad]
    ref = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"],
                use_cache=False).loss
    ref_grads = torch.autograd.grad(ref, lora)
    loss, _ = make_loss(chunk=6)(model, batch)
    grads = torch.autograd.grad(loss, lora)
    torch.testing.assert_close(loss, ref, atol=1e-5, rtol=0)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
