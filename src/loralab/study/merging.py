"""A merge against its parents: one drift evaluation of all of them, metric by metric.

    from loralab.study.merging import evaluate_merge
    res = evaluate_merge("merged/ties", ["runs/sport", "runs/medical"], out="merged/ties-eval")

Every parent's own held-out split (rebuilt from its card, as `loralab eval` does) is
written once as a records folder and scored for the merge and for every parent
(`extra_eval`), so each in-domain number compares the same records. `compare` flags
each metric where the merge's point estimate beats every parent's.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..io import write_json


def heldout_folders(parents: list[str], root: Path, seed: int = 0) -> dict[str, str]:
    """{name: records folder} of every parent's held-out split (parents without one are skipped)."""
    from ..adapters import load_card
    from ..data.records import write_records
    from ..evaluate import drift

    out: dict[str, str] = {}
    for p in parents:
        card = load_card(p) or {}
        recs = drift.eval_records(card, None, None, seed)
        if not recs:
            continue
        name = re.sub(r"\W+", "_", card.get("domain") or Path(p).name).strip("_") or "parent"
        while name in out:
            name += "_"
        write_records(root / name, recs)
        out[name] = str(root / name)
    return out


def metric_values(m: dict[str, Any]) -> dict[str, tuple[float, bool]]:
    """{metric: (value, higher_is_better)} from one adapter's metrics.json."""
    vals: dict[str, tuple[float, bool]] = {}
    for k, v in (m.get("in_domain_extra") or {}).items():
        vals[f"in-domain loss: {k}"] = (v["adapter"]["loss"], False)
    f = (m.get("forgetting") or {}).get("adapter_mean") or {}
    if f.get("mean") is not None:
        vals["general accuracy (mean)"] = (f["mean"], True)
    for n, t in (m.get("tasks") or {}).items():
        a = (t.get("adapter") or {}).get(t.get("metric", "acc")) or {}
        if a.get("mean") is not None:
            vals[f"{n} {t.get('metric', 'acc')}"] = (a["mean"], True)
    for n, t in (m.get("reasoning") or {}).items():
        for key in ("cot_acc", "direct_acc"):
            a = (t.get("adapter") or {}).get(key) or {}
            if a.get("mean") is not None:
                vals[f"{n} {key}"] = (a["mean"], True)
    return vals


def compare(merged: dict[str, Any], parents: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per metric all of them have: values, and whether the merge beats every parent."""
    mv, pv = metric_values(merged), [metric_values(p) for p in parents]
    rows = []
    for k, (v, up) in mv.items():
        if not all(k in p for p in pv):
            continue
        others = [p[k][0] for p in pv]
        beats = all(v > o for o in others) if up else all(v < o for o in others)
        rows.append({"metric": k, "higher_is_better": up, "merge": v, "parents": others, "beats_both": beats})
    return rows


def evaluate_merge(merged: str, parents: list[str], *, out: str, suite: str = "quick", model: str | None = None,
                   seed: int = 0, progress: bool = True, **eval_fields: Any) -> dict[str, Any]:
    """Evaluate the merge and its parents together (one base pass); write comparison.json."""
    from ..adapters import load_card
    from ..evaluate import EvalConfig, evaluate

    root = Path(out)
    card = load_card(merged) or {}
    base = card.get("base") or {}
    spec = model or base.get("path") or base.get("spec")
    if not spec:
        raise UserError(f"{merged}: its card names no base model; pass --model")
    extra = heldout_folders(parents, root / "heldout", seed)
    cfg = EvalConfig(model=spec, adapters=[merged, *parents], suite=suite, out=str(root), extra_eval=extra,
                     seed=seed, progress=progress, **eval_fields)
    res = evaluate(cfg)
    ms = list(res["adapters"].values())
    rows = compare(ms[0], ms[1:])
    names = [m["adapter"]["name"] for m in ms]
    summary = {"merge": names[0], "parents": names[1:], "heldout": extra, "suite": suite, "rows": rows,
               "beats_both": [r["metric"] for r in rows if r["beats_both"]], "out": str(root)}
    write_json(root / "comparison.json", summary)
    return summary
