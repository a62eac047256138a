"""A study's runs aggregated over seeds, and variants compared across seeds.

    from loralab.study.seeds import aggregate, compare
    rows = aggregate(runs)          # per variant (labels without the seed) and measure
    cmps = compare(runs)            # pairs of variants that differ in one label, every shared seed

Runs that differ only in their seed are one variant. For each measure a seed gives one
estimate on its own held-out items (the seed also draws the split and the benchmark items),
and `evaluate.seedstats.across_seeds` gives the mean over seeds, its Student t interval and
p-value over the per-seed estimates (the seed is the unit of inference), and an items-only
interval conditional on the trained models. Comparisons are paired within each seed (the two
variants were measured on the same items there, matched by item id) and then aggregated the
same way; their p-values are adjusted together. A difference is a finding only when the
seed-level test rejects after the correction (which puts its unadjusted interval off zero).

Measures (per run, against the base; and a − b for comparisons):
  gain.raw, gain.structured   in-domain gain, nats/token (base loss − adapter loss on the
                              held-out documents, as text / as Q&A)
  forgetting                  general accuracy change, points (macro mean over tasks)
  kl.<domain>                 KL(base ‖ adapter) per token on another domain's prompts
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..evaluate.seedstats import RESAMPLES, across_seeds, mean_part, ratio_part
from ..evaluate.stats import CORRECTIONS

ALPHA = 0.05
MEASURES = {"gain": ("in-domain gain", "nats/token", 1.0), "forgetting": ("general accuracy", "points", 100.0),
            "kl": ("KL on foreign prompts", "nats/token", 1.0)}


def _labels(run: dict) -> dict:
    return {k: v for k, v in (run["config"].get("labels") or {}).items() if k != "seed"}


def _label(labels: dict) -> str:
    return (str(next(iter(labels.values()))) if len(labels) == 1
            else ", ".join(f"{k}={v}" for k, v in labels.items())) or "base config"


def variants(runs: list[dict]) -> list[dict]:
    """[{label, labels, seeds: {seed: run}}] of the finished runs, in first-seen order."""
    out: dict[str, dict] = {}
    for r in runs:
        if not r.get("metrics"):
            continue
        labels = _labels(r)
        key = repr(sorted(labels.items(), key=lambda kv: kv[0]))
        v = out.setdefault(key, {"label": _label(labels), "labels": labels, "seeds": {}})
        v["seeds"][int(r["config"].get("seed", 0))] = r
    return list(out.values())


def _items(run: dict) -> dict:
    return (run.get("metrics") or {}).get("items") or {}


def measures_of(run: dict) -> list[str]:
    it = _items(run)
    out = [f"gain.{f}" for f in ("raw", "structured") if it.get(f"in_domain.{f}")]
    if it.get("forgetting") and it.get("forgetting_base"):
        out.append("forgetting")
    out += [f"kl.{k.split('.', 1)[1]}" for k in sorted(it) if k.startswith("contamination.") and "+" not in k]
    return out


def align(ids_a, ids_b) -> np.ndarray | None:
    """Indices that put b's items in a's order, matched by item id (the k-th repeat of an id with
    the k-th); None when the two were not measured on the same items."""
    if ids_a is None or ids_b is None or len(ids_a) != len(ids_b):
        return None
    where: dict = {}
    for j, i in enumerate(ids_b):
        where.setdefault(str(i), []).append(j)
    out = []
    for i in ids_a:
        slot = where.get(str(i))
        if not slot:
            return None
        out.append(slot.pop(0))
    return np.asarray(out, dtype=np.int64)


def _by_id(x: dict | None, y: dict | None, *keys: str) -> tuple[list[np.ndarray], list[np.ndarray]] | None:
    """x's and y's arrays under `keys`, y's reordered to x's item ids (None: other items)."""
    if not (x and y):
        return None
    order = align(x.get("ids"), y.get("ids"))
    if order is None:
        return None
    return ([np.asarray(x[k], np.float64) for k in keys], [np.asarray(y[k], np.float64)[order] for k in keys])


def _task_diffs(fa: dict, fb: dict) -> list[np.ndarray] | None:
    """Per task (sorted), a's − b's per-item score, items matched by id; None unless both measured
    the same tasks on the same items."""
    if not fa or set(fa) != set(fb):
        return None
    out = []
    for t in sorted(fa):
        got = _by_id(fa[t], fb[t], "values")
        if got is None:
            return None
        out.append(got[0][0] - got[1][0])
    return out


def single_part(run: dict, what: str):
    """One run's statistic against the base (None when it lacks the items)."""
    it = _items(run)
    kind, _, arg = what.partition(".")
    if kind == "gain":
        x = it.get(f"in_domain.{arg}") or {}
        got = _by_id(x.get("base"), x.get("adapter"), "nll", "tokens")
        if got is None:
            return None
        (bn, bt), (an, at) = got
        return ratio_part(bn, bt, an, at)
    if kind == "forgetting":
        diffs = _task_diffs(it.get("forgetting") or {}, it.get("forgetting_base") or {})
        return mean_part(diffs) if diffs else None
    if kind == "kl":
        x = it.get(f"contamination.{arg}")
        return ratio_part(x["kl"], x["tokens"]) if x else None
    return None


def paired_arrays(ia: dict, ib: dict, what: str):
    """The per-item arrays that pair run a with run b on one measure, from their `items`, every
    item matched by its id: ("ratio", (num_a, den_a, num_b, den_b)) for a − b of two ratios of
    sums, ("mean", groups) for a macro mean over tasks of per-item differences, or None when the
    two runs were not measured on the same items. Gain a − gain b = adapter loss b − adapter
    loss a (the base cancels)."""
    kind, _, arg = what.partition(".")
    if kind == "gain":
        got = _by_id((ia.get(f"in_domain.{arg}") or {}).get("adapter"),
                     (ib.get(f"in_domain.{arg}") or {}).get("adapter"), "nll", "tokens")
        return None if got is None else ("ratio", (*got[1], *got[0]))
    if kind == "forgetting":
        diffs = _task_diffs(ia.get("forgetting") or {}, ib.get("forgetting") or {})
        return None if diffs is None else ("mean", diffs)
    if kind == "kl":
        got = _by_id(ia.get(f"contamination.{arg}"), ib.get(f"contamination.{arg}"), "kl", "tokens")
        return None if got is None else ("ratio", (*got[0], *got[1]))
    return None


def paired_part(a: dict, b: dict, what: str):
    """a − b within one seed, on the items both were measured on (None when they differ)."""
    got = paired_arrays(_items(a), _items(b), what)
    if got is None:
        return None
    kind, arrays = got
    return ratio_part(*arrays) if kind == "ratio" else mean_part(arrays)


def aggregate(runs: list[dict], *, seed: int = 0) -> list[dict]:
    """Per variant and measure: mean over seeds, per-seed values, the three intervals."""
    out = []
    for v in variants(runs):
        whats = sorted({w for r in v["seeds"].values() for w in measures_of(r)})
        for what in whats:
            parts = {s: single_part(r, what) for s, r in sorted(v["seeds"].items())}
            parts = {s: p for s, p in parts.items() if p is not None}
            if parts:
                out.append({"variant": v["label"], "labels": v["labels"], "measure": what, "seeds": list(parts),
                            **across_seeds(list(parts.values()), seed=seed)})
    return out


def one_label_pairs(items: list, labels_of=lambda v: v["labels"]):
    """(a, b, label) for every pair that differs in exactly one label other than the seed (two
    seeds of one variant are replicates, not a comparison)."""
    for i, a in enumerate(items):
        for b in items[i + 1:]:
            la, lb = labels_of(a), labels_of(b)
            diff = [k for k in set(la) | set(lb) if la.get(k) != lb.get(k)]
            if len(diff) == 1 and diff[0] != "seed":
                yield a, b, diff[0]


P_LABEL = {"holm": "Holm p", "bh": "BH q"}


def adjust(cmps: list[dict], correction: str = "holm") -> list[dict]:
    """The seed-level p-values of `cmps` adjusted as one family, and each comparison's finding
    flag (a comparison without a seed-level p, e.g. one seed, is never a finding)."""
    for c, p in zip(cmps, CORRECTIONS[correction]([c["p"] for c in cmps])):
        c["p_adj"], c["correction"] = p, correction
        c["finding"] = bool(np.isfinite(p) and p <= ALPHA)
    return cmps


def compare(runs: list[dict], *, correction: str | None = "holm", seed: int = 0,
            pairs: list[tuple[str, str]] | None = None, resamples: int = RESAMPLES) -> list[dict]:
    """a − b for every pair of variants that differ in one label (or the named `pairs` of
    variant labels), paired within each shared seed; p-values adjusted together (None: left
    unadjusted for a caller that picks its own family)."""
    vs = variants(runs)
    by = {v["label"]: v for v in vs}
    todo = ([(by[a], by[b], _axis(by[a], by[b])) for a, b in pairs if a in by and b in by] if pairs is not None
            else list(one_label_pairs(vs)))
    out = []
    for a, b, axis in todo:
        shared = sorted(set(a["seeds"]) & set(b["seeds"]))
        if not shared:
            continue
        whats = [w for w in measures_of(a["seeds"][shared[0]]) if w in measures_of(b["seeds"][shared[0]])]
        for what in whats:
            parts = {s: paired_part(a["seeds"][s], b["seeds"][s], what) for s in shared}
            parts = {s: p for s, p in parts.items() if p is not None}
            if not parts:
                continue
            out.append({"a": a["label"], "b": b["label"], "axis": axis, "measure": what, "seeds": list(parts),
                        **across_seeds(list(parts.values()), seed=seed, resamples=resamples)})
    return adjust(out, correction) if correction else out


def _axis(a: dict, b: dict) -> str:
    diff = [k for k in set(a["labels"]) | set(b["labels"]) if a["labels"].get(k) != b["labels"].get(k)]
    return ",".join(sorted(diff)) or "none"


def describe(what: str) -> tuple[str, str, float]:
    """(name, unit, scale) of a measure."""
    kind, _, arg = what.partition(".")
    name, unit, k = MEASURES[kind]
    if kind == "gain":
        name += " on held-out Q&A" if arg == "structured" else " on held-out text"
    elif kind == "kl":
        name += f" ({arg})"
    return name, unit, k


def decimals(half: float, k: float = 1.0) -> int:
    """Decimals that show a number to two significant digits of its interval's half-width
    (no finer than the statistics resolve), at least 1 and at most 4."""
    h = abs(half * k)
    if not np.isfinite(h) or h == 0:
        return 3
    return int(min(4, max(1, 1 - np.floor(np.log10(h)))))


def result_decimals(c: dict, k: float = 1.0) -> int:
    """`decimals` of a result (aggregate or comparison): from its seed-level interval, else (one
    seed) from its items-only interval."""
    lo, hi = (c["lo"], c["hi"]) if np.isfinite(c["lo"]) else (c["items"]["lo"], c["items"]["hi"])
    return decimals((hi - lo) / 2, k)


def fmt(x: float, k: float, d: int, sign: bool = True) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x * k:{'+' if sign else ''}.{d}f}"


def sentence(c: dict[str, Any]) -> str:
    """One comparison in words: the seed-level interval a finding is judged on, its adjusted p,
    and the items-only interval labelled as conditional on the trained models."""
    name, unit, k = describe(c["measure"])
    d = result_decimals(c, k)
    level = f"{round(100 * c.get('level', 0.95))} %"
    if np.isfinite(c["lo"]):
        ci = f"[{fmt(c['lo'], k, d)}, {fmt(c['hi'], k, d)}] ({level} t over {c['n_seeds']} seeds, unadjusted)"
    else:
        ci = f"(one seed: no interval over training runs, so no finding)"
    head = f"{c['a']} − {c['b']}: {name} {fmt(c['mean'], k, d)} {unit} {ci}"
    verdict = c.get("verdict") or ("finding" if c["finding"] else "no measurable difference")
    mde = c.get("mde")
    if verdict.startswith("no measurable") and mde is not None and np.isfinite(mde):
        verdict += f" (smallest detectable: ±{mde * k:.{d}f} {unit})"
    tail = (f"; {P_LABEL[c.get('correction', 'holm')]} = {c['p_adj']:.2g}"
            f"; items only, conditional on these trained models: [{fmt(c['items']['lo'], k, d)}, "
            f"{fmt(c['items']['hi'], k, d)}]")
    return f"{head} — {verdict}{tail}"
