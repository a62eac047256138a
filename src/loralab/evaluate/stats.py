"""Seeded bootstrap confidence intervals for per-item scores.

Every accuracy is the mean of a per-item vector (0/1 for accuracy, a float for losses);
its 95 % interval is the percentile bootstrap over items. A difference between two
models on the same items is a *paired* bootstrap: both vectors are resampled with the
same item indices, which is much tighter than comparing two separate intervals.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

RESAMPLES = 1000
LEVEL = 0.95


def _indices(n: int, resamples: int, seed: int) -> np.ndarray:
    """(resamples, n) item indices drawn with replacement, reproducible from `seed`."""
    return np.random.default_rng(seed).integers(0, n, size=(resamples, n))


def _interval(stats: np.ndarray, level: float) -> tuple[float, float]:
    a = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [a, 1.0 - a])
    return float(lo), float(hi)


def bootstrap_ci(
    values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, float]:
    """{"mean", "lo", "hi", "n"}: the mean of `values` with its percentile-bootstrap interval."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    means = x[_indices(x.size, resamples, seed)].mean(axis=1)  # (resamples,)
    lo, hi = _interval(means, level)
    return {"mean": float(x.mean()), "lo": lo, "hi": hi, "n": int(x.size)}


def paired_diff_ci(
    after: Sequence[float], before: Sequence[float], *, resamples: int = RESAMPLES,
    level: float = LEVEL, seed: int = 0,
) -> dict[str, float]:
    """mean(after - before) on the same items, with a paired bootstrap interval.

    `p_le_0` is the share of resamples whose difference is <= 0 (a one-sided
    bootstrap p-value for "after is better than before").
    """
    a = np.asarray(after, dtype=np.float64)
    b = np.asarray(before, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need the same items: {a.shape} vs {b.shape}")
    d = a - b
    if d.size == 0:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0, "p_le_0": float("nan")}
    means = d[_indices(d.size, resamples, seed)].mean(axis=1)
    lo, hi = _interval(means, level)
    return {"mean": float(d.mean()), "lo": lo, "hi": hi, "n": int(d.size), "p_le_0": float((means <= 0).mean())}


def pooled_mean_ci(
    groups: Sequence[Sequence[float]], *, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0,
) -> dict[str, float]:
    """Macro mean over groups (e.g. tasks), each group resampled on its own items."""
    groups = [np.asarray(g, dtype=np.float64) for g in groups if len(g)]
    if not groups:
        return {"mean": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for g in groups:  # (resamples,) mean of each group, averaged with equal weight
        means += g[rng.integers(0, g.size, size=(resamples, g.size))].mean(axis=1) / len(groups)
    lo, hi = _interval(means, level)
    return {"mean": float(np.mean([g.mean() for g in groups])), "lo": lo, "hi": hi,
            "n": int(sum(g.size for g in groups))}
