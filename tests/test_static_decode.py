"""Static-cache decoder == the transformers forward: logits of prefill chunks and of decode steps
at different per-row positions, with and without stacked adapters (fused q/k/v and gate/up
factors), rows moved inside the cache, and greedy tokens on the real model."""

from __future__ import annotations

import pytest
import torch
from _serve_util import make_adapter

from loralab.fastlora import stacked_lora
from loralab.serve.bank import AdapterBank, read_lora
from loralab.serve.static import StaticDecoder, supports


@pytest.fixture(scope="module")
def bank(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("static_reg")
    b = AdapterBank(tiny.model)
    for n, seed, kw in (("a", 1, {}), ("b", 2, {"rank": 8, "targets": ["q_proj", "v_proj", "down_proj"]})):
        make_adapter(tiny, root / n, seed, **kw)
        layers, rank, _ = read_lora(root / n, tiny.model)
        b.add(n, layers, rank)
    return b


def _reference(model, bank, seqs, rows):
    """Full-sequence logits of each sequence alone through transformers (+ stacked_lora)."""
    out = []
    for s, r in zip(seqs, rows):
        with torch.no_grad():
            if r:
                bank.rows = bank.rows_for([r])
                with stacked_lora(model, bank):
                    out.append(model(input_ids=torch.tensor([s])).logits[0].float())
                bank.rows = None
            else:
                out.append(model(input_ids=torch.tensor([s])).logits[0].float())
    return out


def test_supports_names_what_it_cannot_run(tiny):
    assert supports(tiny.model) is None

    class Other(torch.nn.Module):
        config = type("C", (), {"model_type": "gpt2"})()

    assert "gpt2" in supports(Other())
    with pytest.raises(ValueError, match="gpt2"):
        StaticDecoder(Other())


@pytest.mark.parametrize("with_adapters,path", [(False, "dense"), (True, "dense"), (True, "gathered")])
def test_prefill_chunks_and_decode_equal_the_transformers_forward(tiny, bank, with_adapters, path, monkeypatch):
    if path == "gathered":  # each row gathers its own factors instead of one matmul over every slot
        monkeypatch.setattr("loralab.fastlora.DENSE_MAX", 0)
    torch.manual_seed(0)
    lens = [7, 12, 3]
    seqs = [torch.randint(5, 1000, (n + 4,)).tolist() for n in lens]  # prompt + 4 decoded tokens
    slots = [[], [(bank.slots["a"].index, 1.0)], [(bank.slots["b"].index, 0.5), (bank.slots["a"].index, 0.25)]]
    rows = slots if with_adapters else [[], [], []]
    ref = _reference(tiny.model, bank, seqs, rows)
    dec = StaticDecoder(tiny.model, bank, max_batch=4, max_context=64, capacity=8)  # grows while running
    lora = dec.adapter_rows(rows)
    kept = dec.adapter_rows(rows, keep=True)  # decode steps reuse each row's gathered factors
    if with_adapters:
        assert all((r.dense is None) == (path == "gathered") for r in lora.values())
    # prefill in chunks of 5 for rows 1..3 of the cache (right-padded to the longest prompt)
    T = max(lens)
    ids = torch.zeros((3, T), dtype=torch.long)
    for i, (s, n) in enumerate(zip(seqs, lens)):
        ids[i, :n] = torch.tensor(s[:n])
    for c0 in range(0, T, 5):
        c1 = min(T, c0 + 5)
        keep = torch.tensor([min(max(n - 1 - c0, 0), c1 - c0 - 1) for n in lens])
        got = dec.forward(ids[:, c0:c1], range(1, 4), c0, keep=keep, lora=lora)
        for i, n in enumerate(lens):
            if c0 <= n - 1 < c1:  # this chunk holds the row's last prompt token
                torch.testing.assert_close(got[i], ref[i][n - 1], rtol=1e-5, atol=1e-5)
    # decode 4 steps, each row at its own position
    pos = torch.tensor(lens)
    for t in range(4):
        tok = torch.tensor([[s[n + t]] for s, n in zip(seqs, lens)])
        got = dec.forward(tok, range(1, 4), pos, lora=kept)
        for i, n in enumerate(lens):
            torch.testing.assert_close(got[i], ref[i][n + t], rtol=1e-5, atol=1e-5)
        pos = pos + 1
    assert dec.capacity >= 16 and dec.capacity <= 64
    # move row 3 into row 0 and decode it alone there: same logits as the reference
    dec.move([3], [0], int(pos[2]))
    s, n = seqs[2], lens[2]
    got = dec.forward(torch.tensor([[s[-1]]]), range(0, 1), torch.tensor([n + 3]), lora=dec.adapter_rows(rows[2:]))
    torch.testing.assert_close(got[0], ref[2][n + 3], rtol=1e-5, atol=1e-5)


def test_adapter_reload_rebuilds_the_fused_factors(tiny, tmp_path):
    own = AdapterBank(tiny.model)
    for n, seed in (("a", 1), ("a2", 9)):
        make_adapter(tiny, tmp_path / n, seed)
    layers, rank, _ = read_lora(tmp_path / "a", tiny.model)
    own.add("a", layers, rank)
    dec = StaticDecoder(tiny.model, own, max_batch=1, max_context=32)
    seq = torch.randint(5, 1000, (6,)).tolist()
    first = dec.forward(torch.tensor([seq]), range(0, 1), 0, lora=dec.adapter_rows([[(own.slots["a"].index, 1.0)]]))
    layers, rank, _ = read_lora(tmp_path / "a2", tiny.model)
    own.add("a", layers, rank)  # replaces "a" with other weights
    rows = [[(own.slots["a"].index, 1.0)]]
    got = dec.forward(torch.tensor([seq]), range(0, 1), 0, lora=dec.adapter_rows(rows))
    torch.testing.assert_close(got[0], _reference(tiny.model, own, [seq], rows)[0][-1], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got, first)


def test_greedy_tokens_equal_transformers_on_the_real_model(smol):
    """bf16 (the serving default on CPU): the decoder's greedy tokens == transformers' greedy
    decode with a KV cache, token for token, and its logits equal bit for bit at batch 1."""
    from transformers import DynamicCache

    tok, model = smol.tokenizer, smol.model
    dec = StaticDecoder(model, None, max_batch=1, max_context=256)
    if dec.packed:  # a packed weight keeps no plain copy beside it (the concatenations are dropped)
        lins = [lin for layer in dec.layers for lin in layer[2].values()] + [dec.head]
        assert all(lin.weight is None and lin.packed is not None for lin in lins)
        assert dec.layers[0][2]["qkv"].out_features == model.config.hidden_size + 2 * dec.kv_out
    for text in ("What is the capital of France?", "Кто написал «Войну и мир»?"):
        prompt = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True)
        if isinstance(prompt, dict) or hasattr(prompt, "input_ids"):
            prompt = prompt["input_ids"]
        cache = DynamicCache()
        with torch.inference_mode():
            ref_logits = model(input_ids=torch.tensor([prompt]), use_cache=True, past_key_values=cache,
                               logits_to_keep=1).logits[:, -1].float()
        got = dec.forward(torch.tensor([prompt]), range(0, 1), 0)
        assert torch.equal(got, ref_logits)
        want, have = [], []
        nxt_ref, nxt = int(ref_logits.argmax()), int(got.argmax())
        pos = len(prompt)
        for _ in range(24):
            want.append(nxt_ref)
            have.append(nxt)
            with torch.inference_mode():
                ref_logits = model(input_ids=torch.tensor([[nxt_ref]]), use_cache=True, past_key_values=cache,
                                   logits_to_keep=1).logits[:, -1].float()
            got = dec.forward(torch.tensor([[nxt]]), range(0, 1), torch.tensor([pos]))
            pos += 1
            nxt_ref, nxt = int(ref_logits.argmax()), int(got.argmax())
        assert have == want
