"""Statistics across seeds: training-run variance beside test-item variance.

    from loralab.evaluate.seedstats import ratio_part, mean_part, across_seeds
    parts = [ratio_part(b_nll, b_tok, a_nll, a_tok) for each seed]     # one statistic per seed
    r = across_seeds(parts)
    r["mean"], r["lo"], r["hi"], r["p"]          # seeds and items resampled together (the finding's interval)
    r["items"]   # {"lo", "hi"}: items resampled within every seed, seeds held fixed
    r["seeds"]   # {"lo", "hi"}: Student t over the per-seed estimates (df = seeds − 1)
    r["per_seed"]

Each seed contributes one estimate of the same statistic on its own items (a ratio of sums
such as a token-weighted loss difference, or a macro mean over tasks of per-item values);
the point estimate is their mean. Three intervals answer three questions:
  items   how much the number would move with other test items, for these trained models;
  seeds   how much it moves from one training run to the next (needs 2+ seeds);
  both    a two-level bootstrap: draw seeds with replacement, then items within each drawn
          seed (an independent draw for every slot): both sources at once. Its two-sided
          p-value (for "the statistic is 0") is what a finding is corrected and judged on.
With few seeds the seed level is coarse (3 seeds: 10 distinct draws) and the t interval is
wide: that is the honest width of a 3-seed experiment, and it is reported as such.
RESAMPLES sets how small a bootstrap p-value can be (1 / RESAMPLES): a study asking m
questions needs m / RESAMPLES well under its alpha for Holm's correction to be able to call
anything a finding (10,000 resamples: up to a few hundred comparisons).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import stats as sps

from .stats import LEVEL, NAN, _interval, _p_two_sided

RESAMPLES = 10_000


@dataclass
class SeedPart:
    """One seed's statistic: its point value, item count, and a sampler of item-resampled values."""

    point: float
    n: int
    draw: Callable[[np.random.Generator, int], np.ndarray]  # (rng, resamples) -> (resamples,)


def ratio_part(num_a: Sequence[float], den_a: Sequence[float], num_b: Sequence[float] | None = None,
               den_b: Sequence[float] | None = None) -> SeedPart:
    """Σnum_a/Σden_a − Σnum_b/Σden_b on this seed's items (b omitted: the ratio alone); items
    resampled whole (cluster bootstrap), one index set for both ratios (paired)."""
    na, da = np.asarray(num_a, np.float64), np.asarray(den_a, np.float64)
    nb = np.asarray(num_b, np.float64) if num_b is not None else np.zeros_like(na)
    db = np.asarray(den_b, np.float64) if den_b is not None else np.ones_like(da)
    if not (na.shape == da.shape == nb.shape == db.shape):
        raise ValueError(f"paired ratios need the same items: {na.shape}, {da.shape}, {nb.shape}, {db.shape}")
    pair = num_b is not None

    def ratio(num, den, idx):
        d = den[idx].sum(axis=1)
        return np.divide(num[idx].sum(axis=1), d, out=np.zeros_like(d), where=d > 0)

    def draw(rng, resamples):
        idx = rng.integers(0, na.size, size=(resamples, na.size))
        return ratio(na, da, idx) - (ratio(nb, db, idx) if pair else 0.0)

    point = na.sum() / da.sum() - (nb.sum() / db.sum() if pair else 0.0) if na.size and da.sum() > 0 else NAN
    return SeedPart(float(point), int(na.size), draw)


def mean_part(groups: Sequence[Sequence[float]]) -> SeedPart:
    """Macro mean over groups (tasks) of per-item values (e.g. adapter − base accuracy per item),
    each group resampled on its own items."""
    gs = [np.asarray(g, np.float64) for g in groups if len(g)]

    def draw(rng, resamples):
        out = np.zeros(resamples)
        for g in gs:
            out += g[rng.integers(0, g.size, size=(resamples, g.size))].mean(axis=1) / len(gs)
        return out

    point = float(np.mean([g.mean() for g in gs])) if gs else NAN
    return SeedPart(point, int(sum(g.size for g in gs)), draw)


def across_seeds(parts: Sequence[SeedPart], *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> dict:
    """Mean over seeds with the items, seeds and two-level intervals (see the module docstring)."""
    parts = [p for p in parts if p.n and np.isfinite(p.point)]
    s = len(parts)
    if s == 0:
        return {"mean": NAN, "lo": NAN, "hi": NAN, "p": NAN, "n_seeds": 0, "n_items": 0, "per_seed": [],
                "items": {"lo": NAN, "hi": NAN}, "seeds": {"lo": NAN, "hi": NAN}}
    rng = np.random.default_rng(seed)
    points = np.array([p.point for p in parts])
    items = np.mean([p.draw(rng, resamples) for p in parts], axis=0)  # seeds fixed, items resampled
    slot = np.stack([np.stack([p.draw(rng, resamples) for _ in range(s)]) for p in parts])  # (seed, slot, r)
    chosen = rng.integers(0, s, size=(resamples, s))  # seeds drawn with replacement per resample
    both = slot[chosen, np.arange(s)[None, :], np.arange(resamples)[:, None]].mean(axis=1)
    if s >= 2:
        half = sps.t.ppf(0.5 + level / 2, s - 1) * points.std(ddof=1) / np.sqrt(s)
        seeds_ci = {"lo": float(points.mean() - half), "hi": float(points.mean() + half)}
    else:
        seeds_ci = {"lo": NAN, "hi": NAN}
    lo, hi = _interval(both, level)
    ilo, ihi = _interval(items, level)
    return {"mean": float(points.mean()), "lo": lo, "hi": hi, "p": _p_two_sided(both), "n_seeds": s,
            "n_items": int(sum(p.n for p in parts)), "per_seed": points.tolist(),
            "items": {"lo": ilo, "hi": ihi}, "seeds": seeds_ci}
