"""Selection policies, their syntax, reconciliation, and the weak-to-strong agreement measures."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from loralab.data.records import Record, write_records
from loralab.io import iter_jsonl
from loralab.score import agreement
from loralab.select import (
    Context, SelectConfig, apply_policies, char_check, k_center, minilm_embed, parse_policy, select,
)

ANSWERS = [
    "The femur is the longest bone in the human body.",
    "Insulin is produced by the beta cells of the pancreas.",
    "Aspirin irreversibly inhibits cyclooxygenase.",
    "The mitral valve sits between the left atrium and ventricle.",
    "Vitamin C deficiency causes scurvy.",
    "The kidneys filter blood to produce urine.",
    "Hemoglobin carries oxygen in red blood cells.",
    "The vagus nerve is the tenth cranial nerve.",
    "Penicillin acts on the bacterial cell wall.",
    "The liver produces bile.",
]
GIBBERISH = "xkqz vvbrt pzzkl qwrtx mnbvc zxkql trpqz vbnmx"


def rec(answer: str, ifd: float, loss_resp: float, i: int) -> Record:
    return Record(kind="qa", question=f"Medical question {i}?", answer=answer,
                  meta={"score": {"ifd": ifd, "loss_resp": loss_resp, "loss_cond": ifd * loss_resp,
                                  "ppl_cond": float(np.exp(ifd * loss_resp)), "ppl_resp": float(np.exp(loss_resp))}})


def scored_set() -> list[Record]:
    rng = random.Random(0)
    recs = [rec(a, 0.3 + 0.05 * i, 2.0 + rng.random(), i) for i, a in enumerate(ANSWERS)]
    recs.append(rec(GIBBERISH, 0.98, 9.5, 99))  # the prompt cannot explain noise: IFD near 1
    return recs


def run(recs, *specs, seed=0, embed=None):
    return apply_policies(recs, [parse_policy(s) for s in specs], Context(random.Random(seed), embed))


def test_parse_policy():
    assert parse_policy("ifd_topk:10").params == {"pct": 10.0}
    p = parse_policy("ppl_band:2,40,mode=value")
    assert (p.name, p.params) == ("ppl_band", {"lo": 2.0, "hi": 40.0, "mode": "value"})
    assert parse_policy("gibberish_guard:z=3,max_loss=6").params == {"z": 3.0, "max_loss": 6.0}
    assert parse_policy("gibberish_guard").params == {}
    for bad in ("nope:1", "ifd_topk:1,2", "ifd_topk:k=3", "random:abc"):
        with pytest.raises(ValueError):
            parse_policy(bad)


def test_gibberish_guard_removes_high_ifd_noise():
    recs = scored_set()
    kept, q, _ = run(recs, "ifd_topk:10")  # 10 % of 11 -> 1 record: the highest IFD below 1
    assert [r.answer for r in kept] == [GIBBERISH]
    kept, q, steps = run(recs, "gibberish_guard", "ifd_topk:10")
    assert GIBBERISH not in [r.answer for r in kept] and len(kept) == 1
    assert kept[0].answer == ANSWERS[-1]  # next highest IFD
    guard = [x for x in q if x["reason"] == "gibberish_guard"]
    assert [x["record"]["answer"] for x in guard] == [GIBBERISH]
    assert "loss" in guard[0]["detail"]
    assert [s["dropped"] for s in steps] == [1, 9]
    # the character checks alone catch it too (no loss outlier needed)
    assert char_check(GIBBERISH) is not None
    kept, _, _ = run(recs, "gibberish_guard:z=0", "ifd_topk:10")
    assert GIBBERISH not in [r.answer for r in kept]


def test_char_check_on_language_and_noise():
    for a in ANSWERS:
        assert char_check(a) is None, a
    assert "repeated" in char_check("The answer is yes, definitely yesssssssssssssssss.")
    assert "letter ratio" in char_check("3.14159 2.71828 1.41421 ###")
    assert "distinct" in char_check("ha " * 30)


def test_ifd_topk_excludes_ifd_at_least_one_and_unscored():
    recs = scored_set()[:4]
    recs[0].meta["score"]["ifd"] = 1.2
    recs.append(Record(kind="raw", text="No IFD for raw text."))
    kept, q, _ = run(recs, "ifd_topk:100")
    assert len(kept) == 3
    assert sorted(x["detail"] for x in q) == ["ifd >= 1", "no ifd score"]


def test_random_is_seeded_and_sized():
    recs = scored_set() * 3
    a, _, _ = run(recs, "random:20", seed=7)
    b, _, _ = run(recs, "random:20", seed=7)
    c, _, _ = run(recs, "random:20", seed=8)
    assert len(a) == round(0.2 * 33) and [r.id for r in a] == [r.id for r in b] != [r.id for r in c]


def test_ppl_band_quantile_and_value():
    recs = scored_set()[:10]
    ppl = sorted(r.meta["score"]["ppl_cond"] for r in recs)
    kept, _, _ = run(recs, "ppl_band:0,1")
    assert len(kept) == 10
    kept, q, _ = run(recs, f"ppl_band:{ppl[2]},{ppl[6]},mode=value")
    assert sorted(r.meta["score"]["ppl_cond"] for r in kept) == ppl[2:7]
    assert all(x["reason"] == "ppl_band" for x in q) and len(q) == 5


def test_k_center_picks_one_per_cluster():
    rng = np.random.default_rng(0)
    centers = np.eye(3, 8)
    pts = np.concatenate([c + 0.01 * rng.standard_normal((4, 8)) for c in centers])
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    assert sorted(i // 4 for i in k_center(pts, 3, first=5)) == [0, 1, 2]


def test_diversity_with_minilm_keeps_distinct_topics(tmp_path):
    topics = [["The quarterback threw a touchdown pass.", "A touchdown pass was thrown by the quarterback.",
               "The quarterback passed for a touchdown."],
              ["Insulin lowers blood glucose.", "Blood sugar is reduced by insulin.", "Insulin reduces glucose in blood."],
              ["Rome is the capital of Italy.", "Italy's capital city is Rome.", "The capital of Italy is Rome."]]
    recs = [rec(t, 0.5 + 0.01 * (3 * g + j), 2.0, 3 * g + j) for g, ts in enumerate(topics) for j, t in enumerate(ts)]
    emb = minilm_embed([t for ts in topics for t in ts])
    assert emb.shape == (9, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    kept, q, _ = run(recs, "diversity:34")  # 3 of 9
    groups = sorted(next(g for g, ts in enumerate(topics) if r.answer in ts) for r in kept)
    assert groups == [0, 1, 2]
    assert topics[2][2] in [r.answer for r in kept]  # seeded by the highest IFD
    assert len(q) == 6 and {x["reason"] for x in q} == {"diversity"}


def test_select_stage_reconciles(tmp_path):
    src = tmp_path / "scored"
    src.mkdir()
    write_records(src, scored_set())
    with open(src / "records.jsonl", "a") as f:
        f.write("{broken\n")
    card = select(src, tmp_path / "sel", SelectConfig(policies=["gibberish_guard", "ifd_topk:50"], seed=1))
    kept = list(iter_jsonl(tmp_path / "sel" / "records.jsonl"))
    q = list(iter_jsonl(tmp_path / "sel" / "quarantine.jsonl"))
    assert card["counts"] == {"read": 12, "kept": len(kept), "quarantined": len(q), "reconciled": True}
    assert len(kept) == 5 and len(q) == 7
    assert sorted({x["reason"].split(":")[0] for x in q}) == ["gibberish_guard", "ifd_topk", "invalid record"]
    assert [s["policy"] for s in card["policies"]] == ["gibberish_guard", "ifd_topk:50"]
    assert json.loads((tmp_path / "sel" / "data_card.json").read_text())["config"]["seed"] == 1


def test_agreement_measures():
    a = [{"ifd": x, "ppl_cond": 10 * x} for x in np.linspace(0.1, 0.9, 20)]
    same = agreement(a, a)
    assert same["spearman_ifd"]["rho"] == pytest.approx(1.0) and same["spearman_ppl"]["rho"] == pytest.approx(1.0)
    assert [o["overlap"] for o in same["top_overlap"]] == [1.0, 1.0, 1.0]
    assert [o["k"] for o in same["top_overlap"]] == [1, 2, 3]
    assert [o["random_expectation"] for o in same["top_overlap"]] == [1 / 20, 2 / 20, 3 / 20]
    rev = agreement(a, a[::-1])
    assert rev["spearman_ifd"]["rho"] == pytest.approx(-1.0)
    assert [o["overlap"] for o in rev["top_overlap"]] == [0.0, 0.0, 0.0]
    b = [dict(s) for s in a]
    b[19]["ifd"], b[16]["ifd"] = b[16]["ifd"], b[19]["ifd"]  # the top-1 differs, top-2 and top-3 share 1 and 2
    o = agreement(a, b)["top_overlap"]
    assert [x["overlap"] for x in o] == [0.0, 0.5, 2 / 3]
