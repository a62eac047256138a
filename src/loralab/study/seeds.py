"""A study's runs aggregated over seeds, and variants compared across seeds.

    from loralab.study.seeds import aggregate, compare
    rows = aggregate(runs)          # per variant (labels without the seed) and measure
    cmps = compare(runs)            # pairs of variants that differ in one label, every shared seed

Runs that differ only in their seed are one variant. For each measure a seed gives one
estimate on its own held-out items (the seed also draws the split), and
`evaluate.seedstats.across_seeds` gives the mean over seeds with three intervals: over
items (seeds fixed), over seeds (t), and both (two-level bootstrap: the one a finding is
judged on, with its p-value). Comparisons are paired within each seed (the two variants
were measured on the same items there) and then aggregated the same way; their p-values
are adjusted together (Holm). A difference is a finding only when its adjusted p < 0.05
and its two-level interval excludes zero; otherwise it is "no measurable difference".

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


def single_part(run: dict, what: str):
    """One run's statistic against the base (None when it lacks the items)."""
    it = _items(run)
    kind, _, arg = what.partition(".")
    if kind == "gain":
        x = it.get(f"in_domain.{arg}") or {}
        if not (x.get("base") and x.get("adapter")):
            return None
        return ratio_part(x["base"]["nll"], x["base"]["tokens"], x["adapter"]["nll"], x["adapter"]["tokens"])
    if kind == "forgetting":
        a, b = it.get("forgetting") or {}, it.get("forgetting_base") or {}
        if not a or set(a) != set(b) or any(a[t] is None or b[t] is None for t in a):
            return None
        return mean_part([np.asarray(a[t], float) - np.asarray(b[t], float) for t in sorted(a)])
    if kind == "kl":
        x = it.get(f"contamination.{arg}")
        return ratio_part(x["kl"], x["tokens"]) if x else None
    return None


def paired_arrays(ia: dict, ib: dict, what: str):
    """The per-item arrays that pair run a with run b on one measure, from their `items`:
    ("ratio", (num_a, den_a, num_b, den_b)) for a − b of two ratios of sums, ("mean", groups)
    for a macro mean over tasks of per-item differences, or None when the two runs were not
    measured on the same items. Gain a − gain b = adapter loss b − adapter loss a (the base cancels)."""
    kind, _, arg = what.partition(".")
    if kind == "gain":
        x, y = (ia.get(f"in_domain.{arg}") or {}).get("adapter"), (ib.get(f"in_domain.{arg}") or {}).get("adapter")
        if not (x and y) or x["ids"] != y["ids"]:
            return None
        return "ratio", (y["nll"], y["tokens"], x["nll"], x["tokens"])
    if kind == "forgetting":
        fa, fb = ia.get("forgetting") or {}, ib.get("forgetting") or {}
        if not fa or set(fa) != set(fb) or any(not fa[t] or len(fa[t]) != len(fb[t] or []) for t in fa):
            return None
        return "mean", [np.asarray(fa[t], float) - np.asarray(fb[t], float) for t in sorted(fa)]
    if kind == "kl":
        x, y = ia.get(f"contamination.{arg}"), ib.get(f"contamination.{arg}")
        if not (x and y) or x["tokens"] != y["tokens"]:
            return None
        return "ratio", (x["kl"], x["tokens"], y["kl"], y["tokens"])
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
    """The p-values of `cmps` adjusted as one family, and each comparison's finding flag."""
    for c, p in zip(cmps, CORRECTIONS[correction]([c["p"] for c in cmps])):
        c["p_adj"], c["correction"] = p, correction
        c["finding"] = bool(p <= ALPHA and (c["lo"] > 0 or c["hi"] < 0))
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
            parts = [paired_part(a["seeds"][s], b["seeds"][s], what) for s in shared]
            parts = [p for p in parts if p is not None]
            if not parts:
                continue
            out.append({"a": a["label"], "b": b["label"], "axis": axis, "measure": what, "seeds": shared,
                        **across_seeds(parts, seed=seed, resamples=resamples)})
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


def sentence(c: dict[str, Any]) -> str:
    """One comparison in words, with the interval a finding is judged on and the other two."""
    name, unit, k = describe(c["measure"])
    ci = f"[{c['lo'] * k:+.3f}, {c['hi'] * k:+.3f}]"
    head = f"{c['a']} − {c['b']}: {name} {c['mean'] * k:+.3f} {unit} {ci}"
    tail = (f" (mean of {c['n_seeds']} seeds; seeds × items interval; over items only "
            f"[{c['items']['lo'] * k:+.3f}, {c['items']['hi'] * k:+.3f}]"
            + (f", over seeds only [{c['seeds']['lo'] * k:+.3f}, {c['seeds']['hi'] * k:+.3f}]"
               if np.isfinite(c["seeds"]["lo"]) else "")
            + f"; {P_LABEL[c.get('correction', 'holm')]} = {c['p_adj']:.3g})")
    verdict = "" if c["finding"] else " — no measurable difference"
    return head + verdict + tail
