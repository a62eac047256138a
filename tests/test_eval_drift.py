"""Contamination: the divergence engine equals a naive computation; over-training drifts more."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from loralab import logprobs as L
from loralab.adapters import apply_adapters
from loralab.evaluate import drift

from test_eval_helpers import fresh, peft_copy, train_adapter


@pytest.fixture(scope="module")
def heavy(tiny, tmp_path_factory):
    """An over-trained adapter: 25 steps at lr 5e-2 on four medical lines."""
    return train_adapter(tiny, tmp_path_factory.mktemp("heavy") / "heavy", steps=25, lr=5e-2)


def test_token_divergence_matches_naive(tiny):
    pm = peft_copy(tiny, init=False, seed=3)  # random B: the adapter changes the output
    texts = [("The patient presented with", " acute chest pain and dyspnoea."), ("x", " y z")]
    enc = [L.encode_pair(tiny.tokenizer, c, x, bos=True) for c, x in texts]
    got = L.token_divergence(pm, pm, enc, p_context=pm.disable_adapter, batch_tokens=16, logits_chunk=3)
    for (ctx, cont), d in zip(enc, got):
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            with pm.disable_adapter():
                lp = pm(input_ids=ids).logits[0].float().log_softmax(-1)
            lq = pm(input_ids=ids).logits[0].float().log_softmax(-1)
        pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
        lp, lq = lp[pos], lq[pos]
        kl = (lp.exp() * (lp - lq)).sum(-1)
        m = ((lp.exp() + lq.exp()) / 2).log()
        js = 0.5 * ((lp.exp() * (lp - m)).sum(-1) + (lq.exp() * (lq - m)).sum(-1))
        np.testing.assert_allclose(d.kl, kl.numpy(), atol=1e-5)
        np.testing.assert_allclose(d.js, js.numpy(), atol=1e-5)
        assert (d.kl > 0).all() and (d.js <= np.log(2) + 1e-6).all()


def test_zero_adapter_has_zero_divergence(tiny):
    pm = peft_copy(tiny, init=True)  # B = 0
    enc = [L.encode_pair(tiny.tokenizer, "Hello", " world, again", bos=True)]
    d = L.token_divergence(pm, pm, enc, p_context=pm.disable_adapter)[0]
    assert np.abs(d.kl).max() < 1e-6 and np.abs(d.js).max() < 1e-6


def test_overtrained_adapter_contaminates_more(tiny, tmp_path, heavy):
    light = train_adapter(tiny, tmp_path / "light", steps=5, lr=1e-3)
    base = fresh(tiny)
    sets = drift.base_prompt_sets(base, n=4, max_new_tokens=8, domains=("medical", "fiction"))
    wrapped = apply_adapters(base, [light, heavy])
    kl = {}
    for name in ("light", "heavy"):
        with drift.active(wrapped.model, name):
            kl[name] = {ps.domain: drift.divergence(wrapped, ps, progress=False) for ps in sets}
    for dom in ("medical", "fiction"):
        assert kl["heavy"][dom]["kl"] > 5 * kl["light"][dom]["kl"] > 0
        assert kl["heavy"][dom]["js"] > kl["light"][dom]["js"]
        assert kl["heavy"][dom]["tokens"] == sum(len(a) + 1 for a in sets[0 if dom == "medical" else 1].answer_ids)


def test_domain_prompts_and_lexicon():
    for d in drift.DOMAINS:
        p = drift.domain_prompts(d, 5, seed=1)
        assert len(p) == 5 and p == drift.domain_prompts(d, 5, seed=1) and all(x.strip() for x in p)
    assert any("touchdown" in t.lower() or "quarterback" in t.lower() for t in drift.domain_prompts("sport", 5))
    lex = drift.packaged_lexicon("sport")
    assert {"touchdown", "quarterback"} <= lex and "the" not in lex
    rate = drift.lexicon_rate(["the quarterback threw a touchdown", "a quiet afternoon in the garden"], lex)
    assert rate[0] > 0.5 and rate[1] == 0.0
    med = drift.build_lexicon(["aspirin dose aspirin dose aspirin dose patient"] * 3, ["football game"] * 3,
                              min_count=3)
    assert {"aspirin", "dose", "patient"} == set(med)


def test_eval_records_rebuild_the_adapters_split(tmp_path):
    from loralab.data.records import Record, write_records
    from loralab.data.split import split

    recs = [Record(kind="qa", question=f"q{i}", answer=f"a{i}", source={"doc": f"d{i}"}) for i in range(40)]
    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data", recs)
    card = {"data": {"path": str(tmp_path / "data")}, "config": {"eval_frac": 0.25, "seed": 7}}
    got = drift.eval_records(card, None, None)
    assert [r.id for r in got] == [r.id for r in split(recs, 0.25, 7)[1]] and got
    assert drift.eval_records({}, None, None) == []
    assert len(drift.eval_records(card, str(tmp_path / "data"), 5)) == 5


@pytest.mark.parametrize("trigger", [None, "<|med|>"])
def test_record_losses_fall_after_training(tiny, heavy, trigger):
    from loralab.data.records import Record

    recs = [Record(kind="raw", text=t) for t in
            ["Question: Which nerve supplies the diaphragm? Answer: The phrenic nerve, from C3 to C5."]]
    base = fresh(tiny)
    bl = drift.record_losses(base, recs, progress=False)
    wrapped = apply_adapters(base, [heavy])
    al = drift.record_losses(wrapped, recs, trigger=trigger, progress=False)
    plain = drift.record_losses(wrapped, recs, progress=False)
    s = drift.loss_summary(al, bl)
    assert s["loss"] < drift.loss_summary(bl, None)["loss"] and s["delta_vs_base"]["mean"] < 0
    assert s["loss"] == pytest.approx(al["nll"].sum() / al["tokens"].sum(), rel=1e-12)
    assert (al["tokens"] == bl["tokens"]).all()  # the trigger goes in the context, never in the scored span
    if trigger:  # the trigger is in the context: it changes the adapter's loss on the same response tokens
        assert not np.allclose(al["nll"], plain["nll"])
    else:
        assert np.array_equal(al["nll"], plain["nll"])


def test_base_side_of_the_divergence_runs_once_for_several_adapters(tiny, tmp_path, heavy, monkeypatch):
    light = train_adapter(tiny, tmp_path / "light", steps=3, lr=1e-3)
    base = fresh(tiny)
    sets = drift.base_prompt_sets(base, n=3, max_new_tokens=6, domains=("medical", "sport"))
    wrapped = apply_adapters(base, [light, heavy])
    plain, calls = {}, []
    for name in ("light", "heavy"):
        with drift.active(wrapped.model, name):
            plain[name] = [drift.divergence(wrapped, ps, progress=False, batch_tokens=64) for ps in sets]
    hidden = L._continuation_hidden
    monkeypatch.setattr(L, "_continuation_hidden", lambda *a, **k: calls.append(1) or hidden(*a, **k))
    shared: dict = {}
    for name in ("light", "heavy"):
        with drift.active(wrapped.model, name):
            got = [drift.divergence(wrapped, ps, progress=False, batch_tokens=64,
                                    base_hidden=shared.setdefault(ps.domain, {})) for ps in sets]
        assert [g["items"] for g in got] == [p["items"] for p in plain[name]]  # the same numbers
    batches = sum(len(v) for v in shared.values())
    assert batches >= 2 and len(calls) == 3 * batches  # base once, each adapter once, per batch


def test_greedy_batches_shortest_first_and_answers_in_prompt_order(tiny, monkeypatch):
    seen = []

    def fake(loaded, inputs, max_new_tokens):
        seen.append([len(x) for x in inputs])
        return [[len(x)] for x in inputs]  # "answer": the prompt's length

    from loralab import generate as G

    monkeypatch.setattr(G, "generate_ids", fake)
    prompts = ["a " * 30, "b", "c " * 10, "d " * 20, "e " * 5]
    ids, _ = drift.greedy(tiny, prompts, 4, batch=2)
    lens = [len(x) for x in drift.chat_inputs(tiny.tokenizer, prompts)]
    assert ids == [[n] for n in lens]
    assert [n for b in seen for n in b] == sorted(lens) and [len(b) for b in seen] == [2, 2, 1]
