"""evaluate/stats.py against reference computations (scipy, explicit loops, textbook values)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from loralab.evaluate import stats as S


def _data(n=40, seed=3):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(5, 200, size=n).astype(float)  # very unequal record lengths
    per_tok = rng.gamma(2.0, 1.0, size=n)
    return per_tok * tokens, tokens  # nll sums, tokens


def test_ratio_point_is_the_token_weighted_ratio_and_inside_its_interval():
    num, den = _data()
    r = S.ratio_ci(num, den, seed=1)
    assert r["mean"] == pytest.approx(num.sum() / den.sum(), rel=1e-12)
    assert r["mean"] != pytest.approx(np.mean(num / den), rel=1e-3)  # not the unweighted mean of ratios
    assert r["lo"] <= r["mean"] <= r["hi"] and r["n"] == 40


def test_ratio_bootstrap_equals_an_explicit_loop_over_the_same_indices():
    num, den = _data(n=15)
    r = S.ratio_ci(num, den, resamples=300, seed=7)
    idx = np.random.default_rng(7).integers(0, 15, size=(300, 15))
    ref = [num[i].sum() / den[i].sum() for i in idx]  # one cluster bootstrap replicate per row
    lo, hi = np.quantile(ref, [0.025, 0.975])
    assert (r["lo"], r["hi"]) == pytest.approx((lo, hi), rel=1e-12)


def test_ratio_interval_agrees_with_scipy_percentile_bootstrap():
    num, den = _data(n=60, seed=5)
    ours = S.ratio_ci(num, den, resamples=20000, seed=0)
    ref = sps.bootstrap((num, den), lambda n, d, axis=-1: n.sum(axis=axis) / d.sum(axis=axis), paired=True,
                        vectorized=True, n_resamples=20000, method="percentile", random_state=1).confidence_interval
    width = ref.high - ref.low
    assert abs(ours["lo"] - ref.low) < 0.05 * width and abs(ours["hi"] - ref.high) < 0.05 * width


def test_paired_ratio_difference_is_tighter_than_separate_intervals_and_centred():
    rng = np.random.default_rng(0)
    num_b, den = _data(n=50, seed=11)
    num_a = num_b * 0.9 + rng.normal(0, 1.0, 50)  # adapter: 10 % lower loss on the same records
    d = S.paired_ratio_diff(num_a, den, num_b, den, seed=0)
    assert d["mean"] == pytest.approx(num_a.sum() / den.sum() - num_b.sum() / den.sum(), rel=1e-12)
    assert d["lo"] <= d["mean"] <= d["hi"] < 0 and d["p"] <= 0.002
    a, b = S.ratio_ci(num_a, den, seed=0), S.ratio_ci(num_b, den, seed=0)
    assert d["hi"] - d["lo"] < 0.5 * min(a["hi"] - a["lo"], b["hi"] - b["lo"])
    with pytest.raises(ValueError, match="same items"):
        S.paired_ratio_diff(num_a[:-1], den[:-1], num_b, den)


def test_paired_mean_difference_p_value_is_uniform_ish_under_the_null():
    rng = np.random.default_rng(2)
    ps = [S.paired_diff_ci(rng.normal(size=30), rng.normal(size=30), seed=i, resamples=400)["p"] for i in range(200)]
    assert 0.02 < np.mean(np.array(ps) < 0.05) < 0.10  # about 5 % false positives at 0.05


def test_pooled_mean_is_the_macro_mean_of_groups():
    g = [np.array([1, 0, 1, 1.0]), np.array([0, 0, 1.0])]
    r = S.pooled_mean_ci(g, seed=0)
    assert r["mean"] == pytest.approx((0.75 + 1 / 3) / 2) and r["n"] == 7 and r["lo"] <= r["mean"] <= r["hi"]
    pr = S.pooled_ratio_ci([([2.0, 4.0], [1.0, 1.0]), ([9.0], [3.0])], seed=0)
    assert pr["mean"] == pytest.approx((3.0 + 3.0) / 2)


def test_holm_matches_the_step_down_definition_and_a_textbook_case():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005, 3*0.01, 2*0.03, 1*0.04 made monotone
    assert S.holm(p) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(0, 0.2, size=rng.integers(1, 12))
        order = np.argsort(q)
        ref = np.empty_like(q)
        run = 0.0
        for k, i in enumerate(order):  # an independent loop over the definition
            run = max(run, min(1.0, (q.size - k) * q[i]))
            ref[i] = run
        assert S.holm(q) == pytest.approx(ref.tolist())
        assert all(h >= x for h, x in zip(S.holm(q), q))


def test_bh_matches_scipy():
    rng = np.random.default_rng(1)
    for _ in range(50):
        q = rng.uniform(0, 0.3, size=rng.integers(1, 15))
        assert S.bh(q) == pytest.approx(sps.false_discovery_control(q, method="bh").tolist())


def test_nan_p_values_pass_through_the_corrections():
    assert np.isnan(S.holm([0.01, float("nan")])[1]) and S.holm([0.01, float("nan")])[0] == pytest.approx(0.01)
    assert np.isnan(S.bh([float("nan")])[0])


def test_bootstrap_p_value_has_the_plus_one_correction():
    """p = 2 (1 + k) / (B + 1): never 0, and its floor says how many resamples were drawn."""
    assert S._p_two_sided(np.ones(999)) == pytest.approx(2 / 1000)
    stats = np.r_[-np.ones(9), np.ones(90)]  # 9 of 99 resamples on the far side of 0
    assert S._p_two_sided(stats) == pytest.approx(2 * 10 / 100)
    assert S._p_two_sided(np.r_[-np.ones(50), np.ones(50)]) == 1.0


@pytest.mark.parametrize("which", ["paired_ratio_diff", "pooled_mean_ci", "bootstrap_ci"])
def test_single_run_intervals_cover_within_two_points(which):
    """The intervals a one-seed report prints (items resampled, the trained model fixed) cover the
    model's own true value within 2 points of 95 % (1,500 simulated test sets, seeded)."""
    rng = np.random.default_rng({"paired_ratio_diff": 1, "pooled_mean_ci": 2, "bootstrap_ci": 3}[which])
    hit, reps, truth = 0, 1500, 0.05
    for i in range(reps):
        if which == "paired_ratio_diff":
            tok = rng.integers(5, 60, 60).astype(float)
            base = rng.normal(2.5, 0.4, 60)
            r = S.paired_ratio_diff((base + truth + rng.normal(0, 0.3, 60)) * tok, tok,
                                    (base + rng.normal(0, 0.3, 60)) * tok, tok, resamples=400, seed=i)
        elif which == "pooled_mean_ci":
            groups = [np.where((u := rng.random(120)) < 0.1 + truth / 2, 1.0, np.where(u > 0.9 + truth / 2, -1.0, 0.0))
                      for _ in range(2)]
            r = S.pooled_mean_ci(groups, resamples=400, seed=i)
        else:
            r = S.bootstrap_ci((rng.random(200) < 0.5 + truth).astype(float), resamples=400, seed=i)
            truth_here = 0.5 + truth
        want = truth_here if which == "bootstrap_ci" else truth
        hit += r["lo"] <= want <= r["hi"]
    assert abs(hit / reps - 0.95) <= 0.02, hit / reps
