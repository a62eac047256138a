"""Across seeds: the seed is the unit of inference. The t interval and p-value over per-seed
estimates (checked against scipy), their coverage and size by simulation (3 and 8 seeds, null
and non-null, with and without training-run spread), the items-only interval's coverage of the
trained models' own value, TOST and the minimal detectable effect, pairing by item id, and
comparisons that are findings only when the seed-level test rejects after correction."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from scipy import stats as sps

from loralab.evaluate.seedstats import across_seeds, mde, mean_part, ratio_part, seed_t, tost
from loralab.evaluate.stats import paired_ratio_diff
from loralab.study import seeds as S

NOMINAL = 0.95
REPS = 2000  # Monte Carlo SE of a 95 % coverage: 0.49 points


def _ratio(rng, n, shift=0.0):
    tok = rng.integers(5, 30, n).astype(float)
    return rng.normal(2.0 + shift, 0.3, n) * tok, tok


def test_ratio_part_point_and_single_seed_has_no_seed_inference():
    rng = np.random.default_rng(0)
    (na, da), (nb, db) = _ratio(rng, 40), _ratio(rng, 40, 0.1)
    p = ratio_part(na, da, nb, db)
    assert p.point == pytest.approx(na.sum() / da.sum() - nb.sum() / db.sum(), rel=1e-12)
    r = across_seeds([p], resamples=4000)
    ref = paired_ratio_diff(na, da, nb, db, resamples=4000)
    assert r["mean"] == pytest.approx(ref["mean"]) and r["n_seeds"] == 1
    assert np.isnan(r["lo"]) and np.isnan(r["p"])  # one training run says nothing of the next
    # the items-only interval is the item bootstrap of the same statistic (other draws)
    assert r["items"]["lo"] == pytest.approx(ref["lo"], abs=0.02) and r["items"]["hi"] == pytest.approx(ref["hi"], abs=0.02)


def test_seed_t_is_students_t_over_the_per_seed_estimates():
    x = [0.31, 0.12, 0.45, 0.2, 0.27]
    r = seed_t(x)
    t = sps.ttest_1samp(x, 0.0)
    ci = t.confidence_interval(0.95)
    assert r["mean"] == pytest.approx(np.mean(x)) and r["p"] == pytest.approx(t.pvalue, rel=1e-10)
    assert (r["lo"], r["hi"]) == (pytest.approx(ci.low, rel=1e-10), pytest.approx(ci.high, rel=1e-10))
    assert r["df"] == 4 and r["se"] == pytest.approx(np.std(x, ddof=1) / np.sqrt(5))
    same = seed_t([0.2, 0.2])  # two seeds, the same difference by chance: no spread, nothing testable
    assert same["mean"] == pytest.approx(0.2) and same["sd"] == 0.0
    assert np.isnan(same["p"]) and np.isnan(same["lo"]) and np.isnan(same["hi"])
    assert np.isnan(tost(same, 1.0)) and np.isnan(mde(same["sd"], 2, 0.05))
    assert seed_t([0.0, 0.0])["p"] == 1.0


def test_across_seeds_uses_the_seed_level_interval():
    rng = np.random.default_rng(1)
    parts = [ratio_part(*_ratio(rng, 400, shift)) for shift in (0.0, 0.4, 0.8)]  # seeds far apart
    r = across_seeds(parts)
    assert r["per_seed"] == pytest.approx([p.point for p in parts])
    ref = seed_t([p.point for p in parts])
    assert (r["mean"], r["lo"], r["hi"], r["p"]) == pytest.approx((ref["mean"], ref["lo"], ref["hi"], ref["p"]))
    assert r["hi"] - r["lo"] > 3 * (r["items"]["hi"] - r["items"]["lo"])  # the training-run spread dominates
    assert 2 / 10_001 <= r["items"]["p"] <= 1  # +1-corrected bootstrap p: never 0


def test_mean_part_macro_mean():
    p = mean_part([[1, 0, 1, 1], [0, 0]])
    assert p.point == pytest.approx((0.75 + 0.0) / 2) and p.n == 6


# ------------------------------------------------------------------ simulation

def _gain_seed(rng, theta, n=40):
    """One seed's paired token-weighted loss difference on n items whose true value is theta."""
    tok = rng.integers(5, 30, n).astype(float)
    base = rng.normal(2.5, 0.4, n)  # item difficulty, shared by both sides (pairing)
    a = (base + rng.normal(0, 0.3, n)) * tok
    b = (base + theta + rng.normal(0, 0.3, n)) * tok
    return ratio_part(b, tok, a, tok)  # b − a: true value theta


def _acc_seed(rng, theta, n=(50, 50)):
    """One seed's macro mean over two tasks of per-item accuracy differences (−1, 0, +1) whose
    true value is theta."""
    groups = []
    for k in n:
        u = rng.random(k)
        groups.append(np.where(u < 0.1 + theta / 2, 1.0, np.where(u > 0.9 + theta / 2, -1.0, 0.0)))
    return mean_part(groups)


SCENARIOS = [(kind, seeds, mu, tau) for kind in ("gain", "acc") for seeds in (3, 8) for mu in (0.0, 0.05)
             for tau in (0.0, 0.04)]


@pytest.mark.parametrize("kind,seeds,mu,tau", SCENARIOS)
def test_seed_interval_covers_and_its_test_has_its_size(kind, seeds, mu, tau):
    """The interval and p-value a finding rests on: coverage of the true mean within 2 points of
    95 % (and the null rejection rate within 1.5 points of 5 %) whether or not training runs
    differ (tau: the spread of a seed's true value around mu, 0 to several item SEs)."""
    rng = np.random.default_rng(zlib.crc32(repr((kind, seeds, mu, tau)).encode()))
    make = _gain_seed if kind == "gain" else _acc_seed
    hit = reject = 0
    for _ in range(REPS):
        theta = mu + tau * rng.standard_normal(seeds)
        r = seed_t([make(rng, t).point for t in theta])
        hit += r["lo"] <= mu <= r["hi"]
        reject += r["p"] <= 0.05
    assert abs(hit / REPS - NOMINAL) <= 0.02, (hit / REPS)
    if mu == 0:
        assert abs(reject / REPS - 0.05) <= 0.015, reject / REPS


@pytest.mark.parametrize("kind,seeds,mu", [(k, s, m) for k in ("gain", "acc") for s in (3, 8) for m in (0.0, 0.05)])
def test_items_interval_covers_the_trained_models_own_value(kind, seeds, mu):
    """The items-only interval is conditional on the trained models: with their true values held
    fixed (tau large) and the test items drawn anew, it covers their mean within 2 points of 95 %
    (it would not cover mu: that is what the seed-level interval is for)."""
    rng = np.random.default_rng(zlib.crc32(repr((kind, seeds, mu, "items")).encode()))
    theta = mu + 0.04 * rng.standard_normal(seeds)  # these trained models
    target = theta.mean()
    make = (lambda t: _gain_seed(rng, t, n=60)) if kind == "gain" else (lambda t: _acc_seed(rng, t, n=(120, 120)))
    reps, hit = 1500, 0
    for i in range(reps):
        r = across_seeds([make(t) for t in theta], resamples=400, seed=i)
        hit += r["items"]["lo"] <= target <= r["items"]["hi"]
    assert abs(hit / reps - NOMINAL) <= 0.02, hit / reps


def test_tost_size_at_the_margin_and_its_interval_rule():
    rng = np.random.default_rng(7)
    margin, sd, n = 0.05, 0.03, 8
    # at the margin (the boundary of "not equivalent") equivalence is declared at most alpha of the time
    x = 0.05 + sd * rng.standard_normal((REPS, n))
    ps = np.array([tost(seed_t(row), margin) for row in x])
    assert (ps <= 0.05).mean() <= 0.05 + 0.012
    # TOST at alpha rejects exactly when the 1 − 2 alpha t interval lies inside ±margin
    for row in x[:200] - 0.04:
        r = seed_t(row, level=0.90)
        inside = -margin < r["lo"] and r["hi"] < margin
        assert (tost(seed_t(row), margin) <= 0.05) == inside
    assert np.isnan(tost(seed_t([0.1]), margin))


def test_mde_has_the_power_it_states():
    rng = np.random.default_rng(8)
    sd, n, alpha = 0.04, 8, 0.05 / 20
    d = mde(sd, n, alpha)
    x = d + sd * rng.standard_normal((4000, n))
    power = (np.array([seed_t(row)["p"] for row in x]) <= alpha).mean()
    assert abs(power - 0.8) <= 0.025, power
    assert mde(sd, 3, alpha) > 2 * d  # three seeds detect only far larger effects
    assert np.isnan(mde(sd, 1, alpha)) and np.isnan(mde(0.0, 8, alpha))


# ------------------------------------------------------------------ pairing by item id

def test_items_are_paired_by_id_not_by_position():
    rng = np.random.default_rng(4)
    ids = [f"q{i}" for i in range(30)]
    a = {"ids": ids, "nll": rng.random(30).tolist(), "tokens": rng.integers(1, 9, 30).tolist()}
    b = {"ids": ids, "nll": rng.random(30).tolist(), "tokens": rng.integers(1, 9, 30).tolist()}
    perm = rng.permutation(30)
    b_shuffled = {k: [v[i] for i in perm] for k, v in b.items()}
    ia, ib = {"in_domain.raw": {"adapter": a}}, {"in_domain.raw": {"adapter": b}}
    want = S.paired_arrays(ia, ib, "gain.raw")
    got = S.paired_arrays(ia, {"in_domain.raw": {"adapter": b_shuffled}}, "gain.raw")
    for x, y in zip(want[1], got[1]):
        assert np.array_equal(np.asarray(x), np.asarray(y))
    other = {**b, "ids": ids[:-1] + ["zz"]}
    assert S.paired_arrays(ia, {"in_domain.raw": {"adapter": other}}, "gain.raw") is None
    # forgetting: per task, shuffled items of the same ids give the same differences
    fa = {"arc": {"ids": ids, "values": [1.0] * 15 + [0.0] * 15}}
    fb = {"arc": {"ids": [ids[i] for i in perm], "values": [float(i % 2) for i in perm]}}
    kind, groups = S.paired_arrays({"forgetting": fa}, {"forgetting": fb}, "forgetting")
    assert kind == "mean" and groups[0].tolist() == [1.0 - (i % 2) if i < 15 else 0.0 - (i % 2) for i in range(30)]
    assert S.paired_arrays({"forgetting": fa}, {"forgetting": {"arc": {**fa["arc"], "ids": ids[::-1][:29] + ["x"]}}},
                           "forgetting") is None
    # KL: prompts matched by their ids
    ka = {"ids": ["p1", "p2"], "kl": [1.0, 2.0], "tokens": [10, 20]}
    kb = {"ids": ["p2", "p1"], "kl": [4.0, 3.0], "tokens": [20, 10]}
    _, (na, da, nb, db) = S.paired_arrays({"contamination.x": ka}, {"contamination.x": kb}, "kl.x")
    assert nb.tolist() == [3.0, 4.0] and db.tolist() == [10.0, 20.0]


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
    runs = [_run("qa", s, 1.9 + 0.02 * s, rng=rng) for s in range(4)] + \
           [_run("raw", s, 2.3 + 0.02 * s, rng=rng) for s in range(4)] + \
           [_run("raw_again", s, 2.3 + 0.02 * s, rng=rng) for s in range(4)]
    vs = S.variants(runs)
    assert [v["label"] for v in vs] == ["qa", "raw", "raw_again"] and sorted(vs[0]["seeds"]) == [0, 1, 2, 3]
    agg = {(a["variant"], a["measure"]): a for a in S.aggregate(runs)}
    g = agg[("qa", "gain.raw")]
    per = []
    for s in range(4):
        it = runs[s]["metrics"]["items"]["in_domain.raw"]
        per.append(sum(it["base"]["nll"]) / sum(it["base"]["tokens"]) - sum(it["adapter"]["nll"]) / sum(it["adapter"]["tokens"]))
    assert g["per_seed"] == pytest.approx(per) and g["mean"] == pytest.approx(np.mean(per))
    cmps = {(c["a"], c["b"]): c for c in S.compare(runs)}
    big = cmps[("qa", "raw")]  # qa's gain − raw's gain = raw's loss − qa's loss ≈ +0.4
    assert big["mean"] == pytest.approx(0.4, abs=0.03) and big["finding"] and big["lo"] > 0
    assert big["p"] == pytest.approx(sps.ttest_1samp(big["per_seed"], 0).pvalue)
    null = cmps[("raw", "raw_again")]
    assert not null["finding"] and "no measurable difference" in S.sentence(null)
    assert "t over 4 seeds" in S.sentence(big) and "no measurable" not in S.sentence(big)
    assert "conditional on these trained models" in S.sentence(big)
    assert all(c["p_adj"] >= c["p"] for c in cmps.values())


def test_decimals_follow_the_interval():
    assert S.decimals(0.0123) == 3 and S.decimals(0.5) == 2 and S.decimals(3.2) == 1 and S.decimals(40) == 1
    assert S.decimals(0.00004) == 4 and S.fmt(0.12345, 100.0, 1) == "+12.3"
