"""Serving engine: stacked LoRA == PEFT, mixed batches == requests alone, log-probs == the
log-prob engine, strength 0 == base, continuous batching, the registry's refusals."""

from __future__ import annotations

import json
import os
import shutil

import pytest
import torch
from _serve_util import make_adapter, peft_with

from loralab.fastlora import RowAdapters, stacked_lora, stacked_lora_linear
from loralab.logprobs import token_logprobs
from loralab.serve.bank import AdapterBank, read_lora
from loralab.serve.engine import Done, Engine, Sampling, Token, UnknownAdapter
from loralab.serve.registry import Registry, RegistryError

NAMES = ["a", "b", "c"]


@pytest.fixture(scope="module")
def reg(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    make_adapter(tiny, root / "a", 1, rank=4)
    make_adapter(tiny, root / "b", 2, rank=8, alpha=4.0, targets=["q_proj", "v_proj"])
    make_adapter(tiny, root / "c", 3, rank=2, use_rslora=False)
    return root


@pytest.fixture(scope="module", params=["static", "transformers"])
def engine(tiny, reg, request):
    """Both forwards: the static-cache decoder and the transformers one (each test runs on both)."""
    return Engine(tiny, Registry(reg), max_batch=8, decode=request.param)


def _prompts(tok):
    return [tok.encode(t, add_special_tokens=False) for t in
            ("The game", "In the second quarter the Raiders scored", "Doctors say", "A long prompt " * 6)]


def test_stacked_forward_equals_peft_mixed_batch(tiny, reg):
    """One forward of a batch mixing base + 3 adapters (different ranks, targets) == PEFT's mixed
    batch, on the dense and on the gathered path; one adapter over the batch: the lean path."""
    folders = {n: reg / n for n in NAMES}
    ref = peft_with(tiny, folders)
    bank = AdapterBank(tiny.model)
    for n in NAMES:
        layers, rank, _ = read_lora(folders[n], tiny.model)
        bank.add(n, layers, rank)
    ids = torch.randint(5, 1000, (4, 11))
    mixed = [[], [(bank.slots["a"].index, 1.0)], [(bank.slots["b"].index, 1.0)], [(bank.slots["c"].index, 1.0)]]
    with torch.no_grad():
        want = ref(input_ids=ids, adapter_names=["__base__", "a", "b", "c"]).logits
        base = tiny.model(input_ids=ids).logits
        for rows, path in ((bank.rows_for(mixed), "dense"), (RowAdapters.of(mixed), "gathered")):
            assert rows.single is None and (rows.dense is not None) == (path == "dense")
            bank.rows = rows
            with stacked_lora(tiny.model, bank):
                got = tiny.model(input_ids=ids).logits
            assert not any("forward" in m.__dict__ for m in tiny.model.modules())  # restored
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
            assert torch.equal(got[0], base[0]) or path == "dense"  # gathered: the base row exactly
            torch.testing.assert_close(got[0], base[0], atol=1e-6, rtol=0)
            assert not torch.allclose(got[1], base[1], atol=1e-3)  # adapters visibly change their rows
        bank.rows = bank.rows_for([[(bank.slots["b"].index, 1.0)]] * 4)
        assert bank.rows.single is not None
        with stacked_lora(tiny.model, bank):
            got = tiny.model(input_ids=ids).logits
        ref.set_adapter("b")
        torch.testing.assert_close(got, ref(input_ids=ids).logits, atol=1e-5, rtol=1e-4)


def test_stacked_linear_composition_and_strength():
    """Σ_k scale_k · (x A_k^T) B_k^T per row, on the gathered, dense and lean paths."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 6, generator=g)
    W, b = torch.randn(7, 6, generator=g), torch.randn(7, generator=g)
    A, Bt = torch.randn(4, 2, 6, generator=g), torch.randn(4, 2, 7, generator=g)
    A[0], Bt[0] = 0, 0
    spec = [[(1, 0.5), (2, -1.0)], [], [(3, 2.0)]]
    base = x @ W.T + b
    want = torch.stack([base[0] + 0.5 * x[0] @ A[1].T @ Bt[1] - x[0] @ A[2].T @ Bt[2],
                        base[1], base[2] + 2.0 * x[2] @ A[3].T @ Bt[3]])
    gathered, dense = RowAdapters.of(spec), RowAdapters.of(spec, n_slots=4, rank=2)
    assert gathered.dense is None and dense.dense is not None and dense.dense.shape == (3, 8)
    for rows in (gathered, dense):
        torch.testing.assert_close(stacked_lora_linear(x, W, b, A, Bt, rows), want, atol=1e-5, rtol=1e-5)
    one = RowAdapters.of([[(3, 2.0)]] * 3, n_slots=4, rank=2)
    assert one.single == (3, 2.0)
    torch.testing.assert_close(stacked_lora_linear(x, W, b, A, Bt, one), base + 2.0 * x @ A[3].T @ Bt[3],
                               atol=1e-5, rtol=1e-5)
    zero = RowAdapters.of([[(3, 0.0)]] * 3)
    assert torch.equal(stacked_lora_linear(x, W, b, A, Bt, zero), torch.nn.functional.linear(x, W, b))


def test_fp32_factors_beside_a_bf16_base():
    """The bank keeps fp32 factors beside a bf16 base; every path applies them in fp32 and casts the
    update once: equal to the fp32 update cast to bf16 and added to the bf16 base output."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 5, 6, generator=g).bfloat16()
    W, b = torch.randn(7, 6, generator=g).bfloat16(), torch.randn(7, generator=g).bfloat16()
    A, Bt = torch.randn(4, 2, 6, generator=g), torch.randn(4, 2, 7, generator=g)
    A[0], Bt[0] = 0, 0
    base = torch.nn.functional.linear(x, W, b)
    xf = x.float()
    spec = [[(1, 0.5), (2, -1.0)], [], [(3, 2.0)]]
    upd = torch.stack([0.5 * xf[0] @ A[1].T @ Bt[1] - xf[0] @ A[2].T @ Bt[2], torch.zeros(5, 7),
                       2.0 * xf[2] @ A[3].T @ Bt[3]])
    for rows in (RowAdapters.of(spec), RowAdapters.of(spec, n_slots=4, rank=2)):
        got = stacked_lora_linear(x, W, b, A, Bt, rows)
        assert got.dtype == torch.bfloat16
        torch.testing.assert_close(got, base + upd.bfloat16(), atol=0.07, rtol=0.02)
    one = stacked_lora_linear(x, W, b, A, Bt, RowAdapters.of([[(3, 2.0)]] * 3, n_slots=4, rank=2))
    torch.testing.assert_close(one, base + (2.0 * xf @ A[3].T @ Bt[3]).bfloat16(), atol=0.07, rtol=0.02)
    bank = AdapterBank(torch.nn.Linear(6, 7).bfloat16())
    assert bank.dtype == torch.float32 and bank.model_dtype == torch.bfloat16


def _run(engine, prompt, adapters, **kw):
    toks, done = engine.generate(prompt, adapters, Sampling(temperature=0.0, **kw))
    return [t.id for t in toks if t.id >= 0], toks, done


def test_mixed_batch_equals_each_alone_and_logprobs(engine, tiny):
    """Greedy answers of a mixed batch (base + 3 adapters, different lengths) == each alone;
    the reported log-probs == the log-prob engine's on (prompt, answer) with PEFT."""
    prompts = _prompts(tiny.tokenizer)
    ads = [[], [("a", 1.0)], [("b", 1.0)], [("c", 1.0)]]
    lens = [6, 9, 12, 7]
    alone = [_run(engine, p, a, max_tokens=n, top_logprobs=3) for p, a, n in zip(prompts, ads, lens)]
    hs = [engine.submit(p, a, Sampling(temperature=0.0, max_tokens=n, top_logprobs=3))
          for p, a, n in zip(prompts, ads, lens)]
    assert engine.queue_depth() == 4
    while not engine._step_once():
        pass
    for h, (ids, toks, done), n in zip(hs, alone, lens):
        evs = list(h.events())
        assert [e.id for e in evs if isinstance(e, Token)] == ids
        assert evs[-1].finish_reason == done.finish_reason == "length" and done.completion_tokens == n
        for e, t in zip(evs, toks):
            assert abs(e.logprob - t.logprob) < 1e-4
    ref = peft_with(tiny, {n: engine.registry.root / n for n in NAMES})
    for (ids, toks, _), p, a in zip(alone, prompts, ads):
        if a:
            ref.set_adapter(a[0][0])
            sc = token_logprobs(ref, [(p, ids)], top_k=3)[0]
        else:
            with ref.disable_adapter():
                sc = token_logprobs(ref, [(p, ids)], top_k=3)[0]
        assert max(abs(float(x) - t.logprob) for x, t in zip(sc.logprobs, toks)) < 1e-4
        assert [[i for i, _ in t.top] for t in toks] == sc.topk_ids.tolist()
        assert sc.greedy  # greedy: each token is the argmax


def test_strength_zero_is_base_and_strength_scales(engine, tiny):
    p = _prompts(tiny.tokenizer)[1]
    base = _run(engine, p, [], max_tokens=8)
    zero = _run(engine, p, [("a", 0.0)], max_tokens=8)
    assert zero[0] == base[0] and [t.logprob for t in zero[1]] == [t.logprob for t in base[1]]
    full = _run(engine, p, [("a", 1.0)], max_tokens=8)
    half = _run(engine, p, [("a", 0.5)], max_tokens=8)
    assert full[0] != base[0]
    # composition: a at 0.5 + a at 0.5 == a at 1 (same row, two entries)
    both = _run(engine, p, [("a", 0.5), ("a", 0.5)], max_tokens=8)
    assert both[0] == full[0]
    assert max(abs(x.logprob - y.logprob) for x, y in zip(both[1], full[1])) < 1e-4
    assert half[1][0].logprob != full[1][0].logprob


def test_continuous_batching_join_and_leave(engine, tiny):
    """A request that joins a running batch, and one that is cancelled mid-way, leave the others' answers unchanged."""
    p1, p2, p3 = _prompts(tiny.tokenizer)[:3]
    a1 = _run(engine, p1, [("a", 1.0)], max_tokens=14)[0]
    a2 = _run(engine, p2, [("b", 1.0)], max_tokens=5)[0]
    h1 = engine.submit(p1, [("a", 1.0)], Sampling(temperature=0.0, max_tokens=14))
    h3 = engine.submit(p3, [], Sampling(temperature=0.0, max_tokens=50))
    for _ in range(4):
        engine._step_once()
    h2 = engine.submit(p2, [("b", 1.0)], Sampling(temperature=0.0, max_tokens=5))  # joins mid-run
    engine._step_once()
    h3.cancel()  # leaves: its cache row is cut out
    while not engine._step_once():
        pass
    assert engine.running() == 0 and engine._cache is None
    got = {k: [e.id for e in h.events() if isinstance(e, Token)] for k, h in (("1", h1), ("2", h2))}
    assert got == {"1": a1, "2": a2}
    assert list(h3.events())[-1].finish_reason == "abort"


def test_sampling_seed_stop_and_eos(engine, tiny):
    p = _prompts(tiny.tokenizer)[0]
    s = dict(max_tokens=10, temperature=0.9, top_p=0.9, seed=7)
    r1 = engine.generate(p, [("c", 1.0)], Sampling(**s))
    r2 = engine.generate(p, [("c", 1.0)], Sampling(**s))
    r3 = engine.generate(p, [("c", 1.0)], Sampling(**{**s, "seed": 8}))
    assert [t.id for t in r1[0]] == [t.id for t in r2[0]] != [t.id for t in r3[0]]
    text = r1[1].text
    stop = text[len(text) // 2: len(text) // 2 + 3]
    cut = engine.generate(p, [("c", 1.0)], Sampling(**s, stop=[stop]))[1]
    assert cut.finish_reason == "stop" and cut.text == text[: text.find(stop)]
    first = r1[0][0].id  # treat the first sampled token as the end token: nothing is answered
    done = engine.generate(p, [("c", 1.0)], Sampling(**s, stop_ids=[first]))[1]
    assert done.finish_reason == "stop" and done.text == "" and done.completion_tokens == 0


def test_load_unload_and_unknown(engine, tiny, reg, tmp_path):
    with pytest.raises(UnknownAdapter, match="available: a, b, c"):
        engine.submit([1, 2], [("zz", 1.0)])
    shutil.copytree(reg / "a", reg / "a2")
    v = engine.version
    engine.load_adapter("a2")
    assert "a2" in engine.adapters() and engine.version == v + 1
    p = _prompts(tiny.tokenizer)[1]
    assert _run(engine, p, [("a2", 1.0)], max_tokens=6)[0] == _run(engine, p, [("a", 1.0)], max_tokens=6)[0]
    h = engine.submit(p, [("a2", 1.0)], Sampling(temperature=0.0, max_tokens=6))
    engine._step_once()
    index = engine.bank.slots["a2"].index
    engine.unload_adapter("a2")  # in use: new requests are refused, the running one finishes
    assert "a2" not in engine.adapters() and [s.index for s in engine._retired] == [index]
    with pytest.raises(UnknownAdapter):
        engine.submit(p, [("a2", 1.0)])
    while not engine._step_once():
        pass
    assert list(h.events())[-1].finish_reason == "length"
    assert engine._retired == [] and index in engine.bank._free  # slot freed once unused
    shutil.rmtree(reg / "a2")


@pytest.mark.parametrize("how", ["load over", "unload then load"])
def test_a_running_request_finishes_on_the_weights_it_started_with(engine, tiny, reg, how):
    """Reloading a name from other weights while a request streams with it: that request's tokens
    equal the old adapter's alone; a request after the reload gets the new weights."""
    shutil.copytree(reg / "a", reg / "x")
    try:
        engine.load_adapter("x")
        p = _prompts(tiny.tokenizer)[1]
        old = _run(engine, p, [("x", 1.0)], max_tokens=12)[0]
        new = _run(engine, p, [("b", 1.0)], max_tokens=12)[0]
        assert old != new
        h = engine.submit(p, [("x", 1.0)], Sampling(temperature=0.0, max_tokens=12))
        queued = engine.submit(p, [("x", 1.0)], Sampling(temperature=0.0, max_tokens=12))  # admitted, not started
        for _ in range(3):
            engine._step_once()
        shutil.rmtree(reg / "x")
        shutil.copytree(reg / "b", reg / "x")  # other weights under the same name
        if how == "unload then load":
            engine.unload_adapter("x")
        engine.load_adapter("x")
        after = engine.submit(p, [("x", 1.0)], Sampling(temperature=0.0, max_tokens=12))
        while not engine._step_once():
            pass
        tokens = lambda h: [e.id for e in h.events() if isinstance(e, Token)]  # noqa: E731
        assert tokens(h) == old and tokens(queued) == old and tokens(after) == new
        assert engine._retired == []
        engine.unload_adapter("x")
        while not engine._step_once():
            pass
    finally:
        shutil.rmtree(reg / "x", ignore_errors=True)


def test_registry_refusals(tiny, reg, tmp_path):
    root = tmp_path / "r"
    root.mkdir()
    outside = make_adapter(tiny, tmp_path / "outside", 5)
    os.symlink(outside, root / "linked")  # a folder that resolves outside
    shutil.copytree(reg / "a", root / "pickled")
    (root / "pickled" / "adapter_model.bin").write_bytes(b"\x80\x04.")
    shutil.copytree(reg / "a", root / "half")  # a half-finished copy: weights cut short
    w = root / "half" / "adapter_model.safetensors"
    w.write_bytes(w.read_bytes()[:-100])
    shutil.copytree(reg / "a", root / "filelink")
    (root / "filelink" / "adapter_model.safetensors").unlink()
    os.symlink(outside / "adapter_model.safetensors", root / "filelink" / "adapter_model.safetensors")
    shutil.copytree(reg / "a", root / ".tmp-copy")  # hidden: never served
    shutil.copytree(reg / "b", root / "good")
    r = Registry(root)
    ok, bad = r.scan()
    assert list(ok) == ["good"]
    assert "outside the registry" in bad["linked"][0]
    assert any("pickle" in x for x in bad["pickled"])
    assert any("incomplete safetensors" in x for x in bad["half"])
    assert any("links outside" in x for x in bad["filelink"])
    for name, path in (("x", "../outside"), ("x", str(outside)), ("x", "linked")):
        with pytest.raises(RegistryError, match="inside the registry|outside"):
            r.resolve(name, path)
    with pytest.raises(RegistryError, match="invalid adapter name"):
        r.resolve("../a")
    # add copies atomically and checks; remove takes it away whole
    e = r.add("copied", reg / "c")
    assert e.folder == (root / "copied").resolve() and "copied" in r.scan()[0]
    with pytest.raises(RegistryError, match="pickle"):
        r.add("bad", root / "pickled")
    assert not (root / "bad").exists() and not [p for p in root.iterdir() if p.name.startswith(".bad")]
    r.remove("copied")
    assert "copied" not in r.scan()[0] and not (root / "copied").exists()
    # card fields, with defaults where the card has none
    card = json.loads((root / "good" / "loralab.json").read_text())
    card.update(role="domain", keywords=["nfl", "touchdown"], trigger="<|sport|>")
    (root / "good" / "loralab.json").write_text(json.dumps(card))
    g = r.scan()[0]["good"]
    assert (g.domain, g.role, g.keywords, g.trigger) == ("d", "domain", ["nfl", "touchdown"], "<|sport|>")
    eng = Engine(tiny, r)
    assert eng.adapters() == ["good"] and set(eng.refused) == {"linked", "pickled", "half", "filelink"}


@pytest.mark.slow
def test_real_model_serving_smoke(smol, tmp_path):
    """SmolLM2-135M: the engine's greedy answer == HF generate's; the API answers a chat request."""
    from fastapi.testclient import TestClient

    from loralab.generate import chat_inputs, generate
    from loralab.serve.api import create_app

    q = "What is the capital of France?"
    want = generate(smol, [q], max_new_tokens=16, backend="hf")[0]
    eng = Engine(smol).start()
    try:
        toks, done = eng.generate(chat_inputs(smol.tokenizer, [q])[0], [], Sampling(max_tokens=16))
        assert done.text.strip() == want
        c = TestClient(create_app(eng))
        r = c.post("/v1/chat/completions", json={"model": smol.spec, "temperature": 0, "max_tokens": 16,
                                                 "messages": [{"role": "user", "content": q}]})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip() == want
    finally:
        eng.stop()


def test_batch_invariant_runs_every_request_alone(tiny, reg):
    """--batch-invariant: never more than one row in a forward, so each answer is its answer alone."""
    eng = Engine(tiny, Registry(reg), batch_invariant=True)
    assert eng.max_batch == 1 and eng.precision["batch_invariant"] and eng.precision["dtype"] == "float32"
    ps = _prompts(tiny.tokenizer)[:3]
    alone = [_run(eng, p, [(n, 1.0)], max_tokens=6)[0] for p, n in zip(ps, NAMES)]
    hs = [eng.submit(p, [(n, 1.0)], Sampling(temperature=0.0, max_tokens=6)) for p, n in zip(ps, NAMES)]
    widest = 0
    while not eng._step_once():
        widest = max(widest, eng.running())
    assert widest == 1
    assert [[e.id for e in h.events() if isinstance(e, Token)] for h in hs] == alone


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(tiny, reg):
    """With 8-token chunks a 40-token prompt takes 5 steps to prefill, and the running request gets
    one token at each of them; both answers equal the requests run alone."""
    eng = Engine(tiny, Registry(reg), max_batch=4, prefill_chunk=8)
    short = _prompts(tiny.tokenizer)[0]
    long_ = (_prompts(tiny.tokenizer)[3] * 3)[:40]
    alone_s = _run(eng, short, [("a", 1.0)], max_tokens=12)[0]
    alone_l = _run(eng, long_, [("b", 1.0)], max_tokens=4)[0]
    hs = eng.submit(short, [("a", 1.0)], Sampling(max_tokens=12))
    eng._step_once()  # prefill of the short prompt: its first token
    hl = eng.submit(long_, [("b", 1.0)], Sampling(max_tokens=4))
    chunks0 = eng.stats["prefill_chunks"]
    for step in range(5):
        before = hs._q.qsize()
        eng._step_once()
        assert eng.stats["prefill_chunks"] == chunks0 + step + 1
        assert hs._q.qsize() == before + 1  # the running answer moved on during every chunk
    while not eng._step_once():
        pass
    got_s = [e.id for e in hs.events() if isinstance(e, Token) and e.id >= 0]
    got_l = [e.id for e in hl.events() if isinstance(e, Token) and e.id >= 0]
    assert (got_s, got_l) == (alone_s, alone_l)


def test_decoders_agree_and_bad_settings_are_refused(tiny, reg):
    with pytest.raises(ValueError, match="decode must be"):
        Engine(tiny, None, decode="fast")
    with pytest.raises(ValueError, match="prefill_chunk"):
        Engine(tiny, None, prefill_chunk=0)
    assert Engine(tiny, None).precision["decoder"] == "static KV cache"
    assert Engine(tiny, None, decode="transformers").precision["decoder"] == "transformers (asked for)"


def test_requests_one_after_another_get_their_own_adapters(engine, tiny):
    """Alternating base and adapter requests, each alone: every answer equals the first of its kind
    (a running batch's adapter layout is never taken from an earlier request's)."""
    p = _prompts(tiny.tokenizer)[1]
    first = {}
    for i in range(6):
        ads = [("a", 1.0)] if i % 2 else []
        got = _run(engine, p, ads, max_tokens=5)[0]
        first.setdefault(bool(ads), got)
        assert got == first[bool(ads)]
    assert first[True] != first[False]
