"""Merges against their parents: one drift evaluation of all of them, metric by metric.

    from loralab.study.merging import evaluate_merge
    res = evaluate_merge("merged/ties", ["runs/sport", "runs/medical"], out="merged/ties-eval")

Every parent's held-out records (its own eval split rebuilt from its card, as `loralab
eval` does, or folders given by the caller, e.g. a study's held-out documents) are scored
for every merge and every parent (`extra_eval`), so each in-domain number of a merge and
of a parent is on the same records. `compare` turns the metrics into rows: the merge's
value, each parent's, the paired difference merge − parent with its 95 % bootstrap
interval, Holm-adjusted p-values over every comparison of the table, and two flags per
metric: the merge beats both parents on the point estimate (`beats_both`), and it does
so with every adjusted p < 0.05 (`beats_both_significant`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import UserError
from ..io import write_json

ALPHA = 0.05


def heldout_folders(parents: list[str], root: Path, seed: int = 0) -> dict[str, str]:
    """{name: records folder} of every parent's own held-out split (parents without one are skipped)."""
    from ..adapters import load_card
    from ..data.records import write_records
    from ..evaluate import drift

    out: dict[str, str] = {}
    for p in parents:
        card = load_card(p) or {}
        recs = drift.eval_records(card, None, None, seed)
        if not recs:
            continue
        name = _name(card.get("domain") or Path(p).name, out)
        write_records(root / name, recs)
        out[name] = str(root / name)
    return out


def _name(raw: str, taken: dict) -> str:
    name = re.sub(r"\W+", "_", raw).strip("_") or "parent"
    while name in taken:
        name += "_"
    return name


# ------------------------------------------------------------------ metrics

def _general_tasks(ms: list[dict]) -> list[str]:
    """Benchmarks every model has, minus any that is some parent's own domain (that is gain, not forgetting)."""
    names = [set(m.get("tasks") or {}) for m in ms]
    common = set.intersection(*names) if names else set()
    own = {n for m in ms for n, t in (m.get("tasks") or {}).items() if t.get("own_domain")}
    return sorted(common - own)


def _diffs(merged: dict, parent: dict, general: list[str], seed: int) -> dict[str, dict]:
    """{metric: paired difference merge − parent with interval and p}, on the same items."""
    from ..evaluate.stats import paired_diff_ci, paired_ratio_diff, pooled_mean_ci

    out = {}
    for k, v in (merged.get("in_domain_extra") or {}).items():
        w = (parent.get("in_domain_extra") or {}).get(k)
        if w and v.get("items") and w.get("items"):
            a, b = v["items"]["adapter"], w["items"]["adapter"]
            if a["ids"] == b["ids"]:
                out[f"in-domain loss: {k}"] = paired_ratio_diff(a["nll"], a["tokens"], b["nll"], b["tokens"], seed=seed)
    if general and all("items" in merged["tasks"][n] and "items" in parent["tasks"][n] for n in general):
        groups = [np.subtract(merged["tasks"][n]["items"]["adapter"], parent["tasks"][n]["items"]["adapter"])
                  for n in general]
        out["general accuracy (mean)"] = pooled_mean_ci(groups, seed=seed)
        for n in general:
            out[f"{n} {merged['tasks'][n].get('metric', 'acc')}"] = paired_diff_ci(
                merged["tasks"][n]["items"]["adapter"], parent["tasks"][n]["items"]["adapter"], seed=seed)
    return out


def metric_values(m: dict[str, Any], general: list[str] | None = None) -> dict[str, tuple[float, bool]]:
    """{metric: (value, higher_is_better)} from one adapter's metrics.json."""
    vals: dict[str, tuple[float, bool]] = {}
    for k, v in (m.get("in_domain_extra") or {}).items():
        vals[f"in-domain loss: {k}"] = (v["adapter"]["loss"], False)
    tasks = m.get("tasks") or {}
    if general:
        accs = [(tasks[n].get("adapter") or {}).get(tasks[n].get("metric", "acc"), {}).get("mean") for n in general]
        if all(a is not None for a in accs):
            vals["general accuracy (mean)"] = (float(np.mean(accs)), True)
    elif (m.get("forgetting") or {}).get("adapter_mean", {}).get("mean") is not None:
        vals["general accuracy (mean)"] = (m["forgetting"]["adapter_mean"]["mean"], True)
    for n, t in tasks.items():
        a = (t.get("adapter") or {}).get(t.get("metric", "acc")) or {}
        if a.get("mean") is not None and (general is None or n in general):
            vals[f"{n} {t.get('metric', 'acc')}"] = (a["mean"], True)
    for n, t in (m.get("reasoning") or {}).items():
        for key in ("cot_acc", "direct_acc"):
            a = (t.get("adapter") or {}).get(key) or {}
            if a.get("mean") is not None:
                vals[f"{n} {key}"] = (a["mean"], True)
    return vals


def compare(merged: dict[str, Any], parents: list[dict[str, Any]], seed: int = 0) -> list[dict[str, Any]]:
    """One row per metric the merge and every parent have (see the module docstring)."""
    from ..evaluate.stats import holm

    general = _general_tasks([merged, *parents]) if merged.get("tasks") else None
    mv, pv = metric_values(merged, general), [metric_values(p, general) for p in parents]
    diffs = [_diffs(merged, p, general or [], seed) if merged.get("tasks") or merged.get("in_domain_extra") else {}
             for p in parents]
    rows = []
    for k, (v, up) in mv.items():
        if not all(k in p for p in pv):
            continue
        others = [p[k][0] for p in pv]
        beats = all(v > o for o in others) if up else all(v < o for o in others)
        rows.append({"metric": k, "higher_is_better": up, "merge": v, "parents": others, "beats_both": beats,
                     "diff": [d.get(k) for d in diffs]})
    ps = [d["p"] for r in rows for d in r["diff"] if d and d.get("p") is not None and not math.isnan(d["p"])]
    adj = iter(holm(ps)) if ps else iter(())
    for r in rows:
        for d in r["diff"]:
            if d and d.get("p") is not None and not math.isnan(d["p"]):
                d["p_holm"] = float(next(adj))
        good = [d is not None and d.get("p_holm", 1.0) < ALPHA and ((d["lo"] > 0) if r["higher_is_better"]
                                                                   else (d["hi"] < 0)) for d in r["diff"]]
        r["beats_both_significant"] = bool(r["diff"]) and all(good)
    return rows


# ------------------------------------------------------------------ run

def evaluate_merges(merged: list[str], parents: list[str], *, out: str, suite: str = "quick",
                    model: str | None = None, heldout: dict[str, str] | None = None, seed: int = 0,
                    progress: bool = True, **eval_fields: Any) -> dict[str, Any]:
    """Evaluate merges and their parents together (one base pass); write comparison.json."""
    from ..adapters import load_card
    from ..evaluate import EvalConfig, evaluate

    root = Path(out)
    card = load_card(merged[0]) or {}
    base = card.get("base") or {}
    spec = model or base.get("path") or base.get("spec")
    if not spec:
        raise UserError(f"{merged[0]}: its card names no base model; pass --model")
    extra = heldout if heldout is not None else heldout_folders(parents, root / "heldout", seed)
    cfg = EvalConfig(model=spec, adapters=[*merged, *parents], suite=suite, out=str(root), extra_eval=extra,
                     seed=seed, progress=progress, **eval_fields)
    res = evaluate(cfg)
    ms = list(res["adapters"].values())
    names = [m["adapter"]["name"] for m in ms]
    k = len(merged)
    merges = {names[i]: {"path": merged[i], "rows": compare(ms[i], ms[k:], seed)} for i in range(k)}
    summary = {"parents": names[k:], "heldout": extra, "suite": suite, "merges": merges,
               "table": gain_table(ms, names), "out": str(root)}
    write_json(root / "comparison.json", summary)
    return summary


def evaluate_merge(merged: str, parents: list[str], *, out: str, **kw: Any) -> dict[str, Any]:
    """One merge against its parents: evaluate_merges' summary with this merge's rows on top."""
    res = evaluate_merges([merged], parents, out=out, **kw)
    name, m = next(iter(res["merges"].items()))
    return {**res, "merge": name, "rows": m["rows"], "beats_both": [r["metric"] for r in m["rows"] if r["beats_both"]]}


def gain_table(ms: list[dict], names: list[str]) -> list[dict[str, Any]]:
    """Per model: in-domain gain (base − model loss, nats/token) on every held-out set and the change of
    general accuracy against the base, each with its paired 95 % interval."""
    general = _general_tasks(ms)
    rows = []
    for name, m in zip(names, ms):
        row: dict[str, Any] = {"model": name}
        for k, v in (m.get("in_domain_extra") or {}).items():
            d = v["adapter"].get("delta_vs_base") or {}
            row[f"gain {k}"] = {"mean": -d["mean"], "lo": -d["hi"], "hi": -d["lo"]} if d else None
        if general and all("delta" in m["tasks"][n] for n in general):
            from ..evaluate.stats import pooled_mean_ci

            row["general acc change"] = pooled_mean_ci(
                [np.subtract(m["tasks"][n]["items"]["adapter"], m["tasks"][n]["items"]["base"]) for n in general])
        rows.append(row)
    return rows
