"""Across seeds: the three intervals (items, seeds, both), paired comparisons within seeds,
and findings only where the two-level interval excludes zero after correction."""

from __future__ import annotations

import numpy as np
import pytest

from loralab.evaluate.seedstats import across_seeds, mean_part, ratio_part
from loralab.evaluate.stats import paired_ratio_diff
from loralab.study import seeds as S


def _ratio(rng, n, shift=0.0):
    tok = rng.integers(5, 30, n).astype(float)
    return rng.normal(2.0 + shift, 0.3, n) * tok, tok


def test_ratio_part_point_and_single_seed_equals_item_bootstrap():
    rng = np.random.default_rng(0)
    (na, da), (nb, db) = _ratio(rng, 40), _ratio(rng, 40, 0.1)
    p = ratio_part(na, da, nb, db)
    assert p.point == pytest.approx(na.sum() / da.sum() - nb.sum() / db.sum(), rel=1e-12)
    r = across_seeds([p], resamples=4000)
    ref = paired_ratio_diff(na, da, nb, db, resamples=4000)
    assert r["mean"] == pytest.approx(ref["mean"]) and r["n_seeds"] == 1 and np.isnan(r["seeds"]["lo"])
    # one seed: the two-level interval is the item interval (same statistic, other draws)
    assert r["lo"] == pytest.approx(ref["lo"], abs=0.02) and r["hi"] == pytest.approx(ref["hi"], abs=0.02)
    assert r["items"]["lo"] == pytest.approx(ref["lo"], abs=0.02)


def test_seed_variance_widens_the_two_level_interval():
    rng = np.random.default_rng(1)
    tight = [ratio_part(*_ratio(rng, 400, shift)) for shift in (0.0, 0.4, 0.8)]  # seeds far apart
    r = across_seeds(tight)
    assert r["per_seed"] == pytest.approx([p.point for p in tight])
    assert r["mean"] == pytest.approx(np.mean([p.point for p in tight]))
    item_w, both_w = r["items"]["hi"] - r["items"]["lo"], r["hi"] - r["lo"]
    assert both_w > 3 * item_w  # the training-run spread dominates
    half = 4.302653 * np.std(r["per_seed"], ddof=1) / np.sqrt(3)  # t(0.975, 2)
    assert r["seeds"]["lo"] == pytest.approx(r["mean"] - half) and r["seeds"]["hi"] == pytest.approx(r["mean"] + half)
    same = across_seeds([tight[0]] * 3)
    assert same["seeds"]["lo"] == pytest.approx(same["mean"]) == pytest.approx(same["seeds"]["hi"])


def test_mean_part_macro_mean():
    p = mean_part([[1, 0, 1, 1], [0, 0]])
    assert p.point == pytest.approx((0.75 + 0.0) / 2) and p.n == 6


def _run(variant, seed, loss, n=60, rng=None):
    rng = rng or np.random.default_rng(seed)
    ids = [f"r{i}" for i in range(n)]  # the seed's held-out records: both variants see the same
    tok = np.random.default_rng(100 + seed).integers(5, 30, n).astype(float)
    base = np.random.default_rng(200 + seed).normal(2.5, 0.2, n) * tok
    ad = rng.normal(loss, 0.05, n) * tok
    items = {"in_domain.raw": {"base": {"ids": ids, "nll": base.tolist(), "tokens": tok.tolist()},
                               "adapter": {"ids": ids, "nll": ad.tolist(), "tokens": tok.tolist()}}}
    return {"id": f"{variant}{seed}", "config": {"labels": {"variant": variant, "seed": seed}, "seed": seed},
            "metrics": {"items": items}, "status": {"state": "done"}}


def test_compare_finds_a_planted_difference_and_not_a_null_one():
    rng = np.random.default_rng(3)
    runs = [_run("qa", s, 1.9 + 0.02 * s, rng=rng) for s in range(3)] + \
           [_run("raw", s, 2.3 + 0.02 * s, rng=rng) for s in range(3)] + \
           [_run("raw_again", s, 2.3 + 0.02 * s, rng=rng) for s in range(3)]
    vs = S.variants(runs)
    assert [v["label"] for v in vs] == ["qa", "raw", "raw_again"] and sorted(vs[0]["seeds"]) == [0, 1, 2]
    agg = {(a["variant"], a["measure"]): a for a in S.aggregate(runs)}
    g = agg[("qa", "gain.raw")]
    per = []
    for s in range(3):
        it = runs[s]["metrics"]["items"]["in_domain.raw"]
        per.append(sum(it["base"]["nll"]) / sum(it["base"]["tokens"]) - sum(it["adapter"]["nll"]) / sum(it["adapter"]["tokens"]))
    assert g["per_seed"] == pytest.approx(per) and g["mean"] == pytest.approx(np.mean(per))
    cmps = {(c["a"], c["b"]): c for c in S.compare(runs)}
    big = cmps[("qa", "raw")]  # qa's gain − raw's gain = raw's loss − qa's loss ≈ +0.4
    assert big["mean"] == pytest.approx(0.4, abs=0.03) and big["finding"] and big["lo"] > 0
    null = cmps[("raw", "raw_again")]
    assert not null["finding"] and "no measurable difference" in S.sentence(null)
    assert "mean of 3 seeds" in S.sentence(big) and "no measurable" not in S.sentence(big)
    assert all(c["p_adj"] >= c["p"] for c in cmps.values())
