"""Seeded bootstrap intervals, paired comparisons and multiple-comparison corrections.

One statistic gives both the point estimate and its interval:

- `bootstrap_ci`      mean of per-item values (0/1 accuracies, per-item scores); percentile
                      bootstrap over items.
- `ratio_ci`          a ratio of sums, e.g. a token-weighted loss Σ nll / Σ tokens: the point
                      estimate is the ratio on all items and the interval is a cluster bootstrap
                      over items (records, prompts) of that same ratio — tokens stay with their
                      record.
- `paired_ratio_diff` Σa/Σda − Σb/Σdb measured on the SAME items (base vs adapter, or two
                      adapters): both ratios are recomputed on the same resampled items, which is
                      much tighter than two separate intervals.
- `paired_diff_ci`    mean(after − before) on the same items (a ratio with unit weights).
- `pooled_mean_ci`    macro mean over groups (tasks), each group resampled on its own items.

Every result is a dict {"mean", "lo", "hi", "n"} (+ "p": a two-sided bootstrap p-value for
"the statistic is 0", with the +1 correction: 2 (1 + k) / (B + 1) where k of the B resamples lie
on the far side of zero, so it never reads 0 and is valid at every level; its floor is
2 / (B + 1)). Intervals are percentile intervals at `level`, unadjusted for multiplicity. `holm` and `bh` adjust a family of p-values (Holm–Bonferroni, family-wise
error; Benjamini–Hochberg, false discovery rate).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95
NAN = float("nan")


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) item indices drawn with replacement, reproducible from `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


def _p_two_sided(stats: np.ndarray) -> float:
    """Bootstrap p-value for H0: statistic = 0: 2 (1 + k) / (B + 1), k the resamples on the far
    side of 0 (the smaller tail), B the resamples (Davison & Hinkley 1997, eq. 4.11's +1 rule)."""
    if stats.size == 0:
        return NAN
    k = min(int((stats <= 0).sum()), int((stats >= 0).sum()))
    return float(min(1.0, 2.0 * (1 + k) / (stats.size + 1)))


def _empty(p: bool = False) -> dict:
    return {"mean": NAN, "lo": NAN, "hi": NAN, "n": 0, **({"p": NAN} if p else {})}


def _result(point: float, stats: np.ndarray, n: int, level: float, p: bool) -> dict:
    lo, hi = _interval(stats, level)
    out = {"mean": float(point), "lo": lo, "hi": hi, "n": int(n)}
    if p:
        out["p"] = _p_two_sided(stats)
    return out


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, float]:
    """{"mean", "lo", "hi", "n"}: the mean of `values` with its percentile-bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return _empty()
    means = x[_indices(x.size, resamples, seed)].mean(axis=1)  # (resamples,)
    return _result(x.mean(), means, x.size, level, p=False)


def ratio_ci(
    num: Sequence[float], den: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
    seed: int = 0, p: bool = False,
) -> dict[str, float]:
    """Σnum / Σden over items, with a cluster bootstrap (items resampled whole) of that ratio."""
    return paired_ratio_diff(num, den, None, None, resamples=resamples, level=level, seed=seed, p=p)


def paired_ratio_diff(
    num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float] | None, den_b: Sequence[float] | None,
    *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0, p: bool = True,
) -> dict[str, float]:
    """Σnum_a/Σden_a − Σnum_b/Σden_b on the same items (b omitted: the ratio a alone).

    Item i contributes (num_a[i], den_a[i], num_b[i], den_b[i]); one set of resampled
    item indices serves both ratios, so the interval is that of the paired difference.
    """
    na, da = np.asarray(num_a, np.float64), np.asarray(den_a, np.float64)
    pair = num_b is not None
    nb = np.asarray(num_b if pair else np.zeros_like(na), np.float64)
    db = np.asarray(den_b if pair else np.ones_like(da), np.float64)
    if not (na.shape == da.shape == nb.shape == db.shape):
        raise ValueError(f"paired ratios need the same items: {na.shape}, {da.shape}, {nb.shape}, {db.shape}")
    if na.size == 0 or da.sum() <= 0 or db.sum() <= 0:
        return _empty(p)
    idx = _indices(na.size, resamples, seed)

    def ratio(num, den):  # (resamples,) ratio of resampled sums; an all-zero resample counts as 0
        d = den[idx].sum(axis=1)
        return np.divide(num[idx].sum(axis=1), d, out=np.zeros_like(d), where=d > 0)

    stats = ratio(na, da) - (ratio(nb, db) if pair else 0.0)
    point = na.sum() / da.sum() - (nb.sum() / db.sum() if pair else 0.0)
    return _result(point, stats, na.size, level, p)


def paired_diff_ci(
    after: Sequence[float], before: Sequence[float], *, resamples: int = RESAMPLES,
    level: float = LEVEL, seed: int = 0,
) -> dict[str, float]:
    """mean(after − before) on the same items, with a paired bootstrap interval.

    `p` is the two-sided bootstrap p-value; `p_le_0` the share of resamples whose
    difference is <= 0 (one-sided, "after is better than before").
    """
    a = np.asarray(after, dtype=np.float64)
    b = np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    d = a - b
    if d.size == 0:
        return {**_empty(p=True), "p_le_0": NAN}
    means = d[_indices(d.size, resamples, seed)].mean(axis=1)
    return {**_result(d.mean(), means, d.size, level, p=True), "p_le_0": float((means <= 0).mean())}


def pooled_mean_ci(
    groups: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
) -> dict[str, float]:
    """Macro mean over groups (e.g. tasks), each group resampled on its own items."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return _empty(p=True)
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for g in groups:  # (resamples,) mean of each group, averaged with equal weight
        means += g[rng.integers(0, g.size, size=(resamples, g.size))].mean(axis=1) / len(groups)
    return _result(np.mean([g.mean() for g in groups]), means, sum(g.size for g in groups), level, p=True)


def pooled_ratio_ci(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]], *, resamples: int = RESAMPLES,
    level: float = LEVEL, seed: int = 0,
) -> dict[str, float]:
    """Macro mean over groups of Σnum/Σden (e.g. KL per token of each foreign domain),
    each group cluster-resampled on its own items."""
    groups = [(np.asarray(n, np.float64), np.asarray(d, np.float64)) for n, d in groups if len(n)]
    if not groups:
        return _empty()
    rng = np.random.default_rng(seed)
    stats = np.zeros(resamples)
    for n, d in groups:
        idx = rng.integers(0, n.size, size=(resamples, n.size))
        den = d[idx].sum(axis=1)
        stats += np.divide(n[idx].sum(axis=1), den, out=np.zeros_like(den), where=den > 0) / len(groups)
    point = np.mean([n.sum() / d.sum() for n, d in groups])
    return _result(point, stats, sum(n.size for n, _ in groups), level, p=False)


# ------------------------------------------------------ multiple comparisons

def holm(pvals: Sequence[float]) -> list[float]:
    """Holm–Bonferroni adjusted p-values (controls the family-wise error rate); NaNs pass through."""
    p = np.asarray(pvals, dtype=np.float64)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):  # step-down: (m - rank) * p_(rank), made monotone
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def bh(pvals: Sequence[float]) -> list[float]:
    """Benjamini–Hochberg adjusted p-values (q-values; controls the false discovery rate)."""
    p = np.asarray(pvals, dtype=np.float64)
    ok = np.flatnonzero(~np.isnan(p))
    out = np.full(p.shape, np.nan)
    m = ok.size
    order = ok[np.argsort(p[ok], kind="stable")[::-1]]  # largest first
    running = 1.0
    for k, i in enumerate(order):  # step-up: p_(j) * m / j, made monotone from the top
        j = m - k
        running = min(running, p[i] * m / j)
        out[i] = running
    return out.tolist()


CORRECTIONS = {"holm": holm, "bh": bh}
CORRECTION_NAMES = {"holm": "Holm–Bonferroni (family-wise error rate)",
                    "bh": "Benjamini–Hochberg (false discovery rate)"}
