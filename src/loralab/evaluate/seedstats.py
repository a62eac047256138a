"""Statistics across seeds: the training run is the unit of inference.

    from loralab.evaluate.seedstats import ratio_part, mean_part, across_seeds, tost, mde
    parts = [ratio_part(b_nll, b_tok, a_nll, a_tok) for each seed]     # one statistic per seed
    r = across_seeds(parts)
    r["mean"], r["lo"], r["hi"], r["p"]   # Student t over the per-seed estimates (df = seeds − 1):
                                          # the interval and test a finding is judged on
    r["items"]    # {"lo", "hi", "p"}: items resampled within every seed, the trained models held
                  # fixed: conditional on these models, NOT an interval for a new training run
    r["per_seed"], r["sd"], r["se"], r["df"]
    tost(r, margin)          # equivalence p-value (two one-sided t tests against ±margin)
    mde(r["sd"], r["n_seeds"], alpha)    # smallest difference detectable with 80 % power

Each seed contributes one estimate of the same statistic on its own items (a ratio of sums
such as a token-weighted loss difference, or a macro mean over tasks of per-item values); the
point estimate is their mean, and a seed's estimate already carries that seed's item noise.
So the t interval over the per-seed estimates covers both sources of variation (training run
and test items) with exact coverage when the per-seed estimates are normal, whatever the ratio
of the two; a two-level bootstrap with 3 seeds does not (it has 10 distinct seed draws and
covered 75-83 % in simulation). With 3 seeds the t interval is wide (t(0.975, 2) = 4.30): that
is the honest width of a 3-seed experiment.

All intervals are unadjusted for multiplicity; p-values are adjusted by the caller over a
declared family (study.findings). Bootstrap p-values carry the +1 correction (stats).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from scipy import optimize
from scipy import stats as sps

from .stats import LEVEL, NAN, _interval, _p_two_sided

RESAMPLES = 10_000
POWER = 0.8  # the power at which the minimal detectable effect is stated


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


def seed_t(points: Sequence[float], level: float = LEVEL) -> dict:
    """One-sample Student t over per-seed estimates: mean, its `level` interval and the two-sided
    p-value for "the mean is 0" (NaN below two seeds: one run says nothing of the next). Seeds that
    all give the same nonzero number leave the test undefined — a sample spread of 0 from a few runs
    of a discrete measure (e.g. two seeds both 2 items apart) is not evidence of no spread — so the
    interval and p are NaN (not testable); the same number 0 everywhere is p = 1."""
    x = np.asarray(points, np.float64)
    s = x.size
    out = {"mean": float(x.mean()) if s else NAN, "n_seeds": int(s), "df": s - 1,
           "sd": NAN, "se": NAN, "lo": NAN, "hi": NAN, "p": NAN}
    if s < 2:
        return out
    sd = 0.0 if np.all(x == x[0]) else float(x.std(ddof=1))
    se = sd / np.sqrt(s)
    if se == 0:  # every seed gave the same number: no spread to test against
        out.update(sd=sd, se=se, p=1.0 if out["mean"] == 0 else NAN)
        return out
    half = float(sps.t.ppf(0.5 + level / 2, s - 1)) * se
    p = float(2 * sps.t.sf(abs(out["mean"]) / se, s - 1))
    out.update(sd=sd, se=se, lo=out["mean"] - half, hi=out["mean"] + half, p=p)
    return out


def tost(r: dict, margin: float) -> float:
    """Equivalence p-value for |mean| < margin from a `seed_t` result: the larger of the two
    one-sided t tests (H0: mean <= −margin, H0: mean >= +margin). Rejecting at alpha is the
    same as the 1 − 2·alpha t interval lying inside (−margin, +margin)."""
    if not (margin and margin > 0) or not np.isfinite(r.get("se", NAN)) or r["n_seeds"] < 2:
        return NAN
    m, se, df = r["mean"], r["se"], r["df"]
    if se == 0:  # no spread across seeds: equivalence is not testable either
        return NAN
    p_low = sps.t.sf((m + margin) / se, df)   # H0: mean <= −margin
    p_high = sps.t.cdf((m - margin) / se, df)  # H0: mean >= +margin
    return float(max(p_low, p_high))


def mde(sd: float, n_seeds: int, alpha: float, power: float = POWER) -> float:
    """The smallest true mean difference the two-sided one-sample t test over `n_seeds` per-seed
    differences of spread `sd` rejects at `alpha` with probability `power` (noncentral t, exact)."""
    if n_seeds < 2 or not np.isfinite(sd) or not 0 < alpha < 1:
        return NAN
    if sd == 0:  # no spread observed: the power of the test is unknown
        return NAN
    df = n_seeds - 1
    crit = sps.t.ppf(1 - alpha / 2, df)

    def short(delta):  # power at a true difference delta, minus the power asked for
        nc = delta * np.sqrt(n_seeds) / sd
        got = sps.nct.sf(crit, df, nc) + sps.nct.cdf(-crit, df, nc)
        return (1.0 if not np.isfinite(got) else got) - power  # nct's tail is NaN far out: power 1 there

    hi = sd * crit / np.sqrt(n_seeds)  # below this the test cannot reach 50 % power
    while short(hi) < 0:
        hi *= 1.5
    return float(optimize.brentq(short, 0.0, hi, xtol=sd * 1e-9))


def across_seeds(parts: Sequence[SeedPart], *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = 0) -> dict:
    """Mean over seeds, its t interval and p-value over seeds, and the items-only interval
    conditional on the trained models (see the module docstring)."""
    parts = [p for p in parts if p.n and np.isfinite(p.point)]
    points = np.array([p.point for p in parts])
    out = {**seed_t(points, level), "n_items": int(sum(p.n for p in parts)), "per_seed": points.tolist(),
           "level": level}
    if not parts:
        out["items"] = {"lo": NAN, "hi": NAN, "p": NAN}
        return out
    rng = np.random.default_rng(seed)
    items = np.mean([p.draw(rng, resamples) for p in parts], axis=0)  # (resamples,) seeds fixed
    ilo, ihi = _interval(items, level)
    out["items"] = {"lo": ilo, "hi": ihi, "p": _p_two_sided(items)}
    return out
