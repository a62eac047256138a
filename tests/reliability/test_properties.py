"""Properties that must hold for every input (hypothesis): readers keep every row, renders
round-trip, selection never keeps more than asked and is deterministic with a seed,
merges keep their identities, the router's chain goes in its order."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from conftest import FULL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loralab.data.records import Record
from loralab.data.render import parse, render
from loralab.data.sources import Bad, Item, read_jsonl
from loralab.merge.methods import Params, merge_deltas, slerp
from loralab.select import Context, ifd_topk, random_pct

N = 300 if FULL else 60
SETTINGS = settings(max_examples=N, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
               max_size=60).filter(lambda s: s.strip())
values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
                      lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                      max_leaves=10)


@SETTINGS
@given(rows=st.lists(st.dictionaries(st.text(max_size=8), values, max_size=4), max_size=12),
       junk=st.lists(st.binary(min_size=1, max_size=30).filter(lambda b: b"\n" not in b), max_size=4),
       crlf=st.booleans())
def test_jsonl_reader_keeps_every_row_and_names_every_bad_line(tmp_path_factory, rows, junk, crlf):
    lines = [json.dumps(r).encode() for r in rows]
    rng = random.Random(len(rows))
    for j in junk:
        lines.insert(rng.randint(0, len(lines)), j)
    p = tmp_path_factory.mktemp("j") / "x.jsonl"
    p.write_bytes((b"\r\n" if crlf else b"\n").join(lines) + b"\n")
    got = list(read_jsonl(p))
    items = [g.value for g in got if isinstance(g, Item)]
    bads = [g for g in got if isinstance(g, Bad)]
    nonblank = [x for x in lines if x.strip()]
    if got and isinstance(got[0], Bad) and got[0].reason == "binary" and "line" not in got[0].loc:
        return  # a NUL in the first line: the whole file is binary, one Bad for it
    assert len(items) + len(bads) == len(nonblank)  # every line is an item or a named bad line
    assert all("line" in b.loc and b.reason for b in bads)
    for r in rows:  # every good row comes back, in order
        assert r in items


@SETTINGS
@given(kind=st.sampled_from(["qa", "instruction", "raw"]), a=text, b=text, fmt=st.sampled_from(["json", "yaml"]))
def test_structured_renders_round_trip(kind, a, b, fmt):
    if kind == "qa":
        rec = Record(kind="qa", question=a, answer=b)
    elif kind == "instruction":
        rec = Record(kind="instruction", instruction=a, output=b)
    else:
        rec = Record(kind="raw", text=a + " " + b)
    r = render(rec, fmt)
    back = parse(r.prompt + r.response, fmt)
    assert back.content() == rec.content()


def _scored(ifds: list[float | None]) -> list[Record]:
    return [Record(kind="qa", question=f"q{i}", answer="a", meta={"score": {} if v is None else {"ifd": v}})
            for i, v in enumerate(ifds)]


@SETTINGS
@given(ifds=st.lists(st.one_of(st.none(), st.floats(0, 2)), max_size=40), pct=st.floats(0.01, 100),
       seed=st.integers(0, 2**16))
def test_selection_never_keeps_more_than_asked_and_is_seeded(ifds, pct, seed):
    recs = _scored(ifds)
    n_max = min(len(recs), max(0, round(pct / 100 * len(recs))))
    for pol in (ifd_topk, random_pct):
        d1 = pol(recs, Context(random.Random(seed)), pct)
        d2 = pol(recs, Context(random.Random(seed)), pct)
        assert d1 == d2  # deterministic with a seed
        kept = len(recs) - len(d1)
        assert kept <= n_max
        if pol is random_pct:
            assert kept == n_max
    kept_ifd = [v for i, v in enumerate(ifds) if i not in ifd_topk(recs, Context(random.Random(0)), pct)]
    assert all(v is not None and v < 1 for v in kept_ifd)
    dropped_ok = [v for i, v in enumerate(ifds) if i in ifd_topk(recs, Context(random.Random(0)), pct)
                  and v is not None and v < 1]
    assert not kept_ifd or not dropped_ok or min(kept_ifd) >= max(dropped_ok)  # the top, not any


shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


@SETTINGS
@given(shape=shapes, n=st.integers(1, 4), seed=st.integers(0, 1000),
       method=st.sampled_from(["linear", "ties", "dare_linear", "dare_ties", "magnitude"]))
def test_merge_identities(shape, n, seed, method):
    g = torch.Generator().manual_seed(seed)
    deltas = [torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(n)]
    w = [float(x) for x in torch.rand(n, generator=g, dtype=torch.float64) + 0.1]
    # density 1: every method keeps every value; one parent with weight 1 is itself
    one = merge_deltas(method, deltas[:1], [1.0], Params(density=1.0, seed=seed), "t")
    torch.testing.assert_close(one, deltas[0], rtol=0, atol=1e-12)
    lin = merge_deltas("linear", deltas, w, Params(), "t")
    torch.testing.assert_close(lin, sum(wi * d for wi, d in zip(w, deltas)), rtol=0, atol=1e-12)
    # seeded: the same seed gives the same merge
    p = Params(density=0.5, seed=seed)
    torch.testing.assert_close(merge_deltas(method, deltas, w, p, "t"), merge_deltas(method, deltas, w, p, "t"))


@SETTINGS
@given(shape=shapes, seed=st.integers(0, 1000))
def test_slerp_ends_are_the_parents(shape, seed):
    g = torch.Generator().manual_seed(seed)
    a, b = (torch.randn(*shape, generator=g, dtype=torch.float64) for _ in range(2))
    torch.testing.assert_close(slerp(0.0, a, b), a, rtol=0, atol=1e-9)
    torch.testing.assert_close(slerp(1.0, a, b), b, rtol=0, atol=1e-9)


names = st.lists(st.sampled_from(["sport", "medical", "bees", "law", "chess"]), min_size=2, max_size=4, unique=True)


@SETTINGS
@given(domains=names, trig=st.integers(0, 3), kw=st.integers(0, 3), filler=st.lists(text, max_size=4),
       use_trigger=st.booleans(), use_keyword=st.booleans())
def test_router_chain_order(domains, trig, kw, filler, use_trigger, use_keyword):
    """Trigger beats keywords beats (no classifier here) the base, whatever else the prompt holds."""
    from loralab.serve.router import Entry, Router

    entries = [Entry(name=d, path=Path(d), card={}, domain=d, keywords=(f"kw{d}",)) for d in domains]
    t_e, k_e = entries[trig % len(entries)], entries[kw % len(entries)]
    words = [w.replace("<|", "").replace("kw", "") for w in filler]
    if use_keyword:
        words.append(f"kw{k_e.name}")
    if use_trigger:
        words.insert(len(words) // 2, f"<|use_lora_{t_e.name}|>")
    prompt = " ".join(words) or "hello"
    d = Router(entries).route(prompt)
    if use_trigger:
        assert (d.rule, d.adapters) == ("trigger", [(t_e.name, 1.0)])
        assert f"<|use_lora_{t_e.name}|>" not in d.text  # stripped (not an aLoRA)
    elif use_keyword:
        assert (d.rule, d.adapters) == ("keyword", [(k_e.name, 1.0)])
    else:
        assert (d.rule, d.adapters) == ("base", [])
    assert d.reason
