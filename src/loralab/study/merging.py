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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

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
    pairs = {n: _task_pair(merged["tasks"][n].get("items"), parent["tasks"][n].get("items")) for n in general}
    if general and all(p is not None for p in pairs.values()):
        out["general accuracy (mean)"] = pooled_mean_ci([a - b for a, b in pairs.values()], seed=seed)
        for n, (a, b) in pairs.items():
            out[f"{n} {merged['tasks'][n].get('metric', 'acc')}"] = paired_diff_ci(a, b, seed=seed)
    return out


def _task_pair(x: dict | None, y: dict | None) -> tuple[np.ndarray, np.ndarray] | None:
    """Two models' per-item scores on one benchmark, y's put in x's item order by item id
    (None when they were not scored on the same items)."""
    from .seeds import align

    order = align((x or {}).get("ids"), (y or {}).get("ids"))
    if order is None:
        return None
    return np.asarray(x["adapter"], np.float64), np.asarray(y["adapter"], np.float64)[order]


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
    summary["findings"] = findings(summary)
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


# ------------------------------------------------------------------ the study block `merge:`

class MergeBlock(BaseModel):
    """A study's `merge:` block: merge the adapters of the runs that differ only along one axis.

        axes: {domain: [sport, medical]}
        merge:
          parents: domain                  # runs differing only in `domain` are merged
          methods:                         # name: MergeConfig fields (not parents / out)
            linear: {method: linear}
            ties: {method: ties, density: 0.5, weights: [1, 1]}
          eval: {}                         # EvalConfig overrides for the merges' evaluation
    """

    model_config = ConfigDict(extra="forbid")
    parents: str = Field(description="The axis whose runs are merged (every other label shared).")
    methods: dict[str, dict[str, Any]] = Field(min_length=1, description="Name: MergeConfig fields.")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig overrides (default: the study's eval).")


@dataclass
class MergeRun:
    id: str  # digest of the parents' run ids and the method's fields
    name: str  # method name
    group: dict[str, Any]  # the labels the parents share
    parents: list[Any]  # run ids, in the parents axis' order
    fields: dict[str, Any]


def check_block(raw: Any, axes: dict[str, list[Any]]) -> list[str]:
    """Every problem of a study's `merge:` block (validated with the spec, before anything runs)."""
    from ..config import check_mapping
    from ..merge import MergeConfig

    try:
        block = MergeBlock.model_validate(raw)
    except ValidationError as e:
        return [f"merge.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
    out = []
    if block.parents not in axes:
        out.append(f"merge.parents: {block.parents!r} is not an axis of this study ({', '.join(axes) or 'none'})")
    n = len(axes.get(block.parents) or [])
    for name, fields in block.methods.items():
        where = f"merge.methods.{name}"
        bad = [k for k in ("parents", "out") if k in (fields or {})]
        out += [f"{where}.{k}: set by the study" for k in bad]
        probs = check_mapping(MergeConfig, fields, where)
        if not probs and not bad and n:
            try:
                MergeConfig(**fields, parents=[f"p{i}" for i in range(n)], out="-")
            except ValidationError as e:
                probs = [f"{where}: {x['msg']}" for x in e.errors()]
        out += probs
    if block.eval:
        from ..evaluate import EvalConfig

        out += check_mapping(EvalConfig, block.eval, "merge.eval")
    return out


def plan(spec, runs) -> list[MergeRun]:
    """Every merge of the study: per group of runs sharing all labels but the parents axis, per method."""
    from .spec import digest

    if not spec.merge:
        return []
    block = MergeBlock.model_validate(spec.merge)
    order = {v: i for i, v in enumerate(spec.axes[block.parents])}
    groups: dict[str, list] = {}
    for r in runs:
        key = {k: v for k, v in r.labels.items() if k != block.parents}
        groups.setdefault(digest(key), []).append(r)
    out = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda r: order[r.labels[block.parents]])
        group = {k: v for k, v in members[0].labels.items() if k != block.parents}
        for name, fields in block.methods.items():
            ids = [r.id for r in members]
            out.append(MergeRun(digest({"parents": ids, "fields": fields}), name, group, ids, dict(fields)))
    return out


def run_merges(spec, root: Path, runs, progress: bool = True) -> dict[str, Any]:
    """Merge the finished parents of every planned merge and evaluate each group's merges with
    their parents in one call; writes merges/<group>/eval/comparison.json and merges.json."""
    block = MergeBlock.model_validate(spec.merge)
    by_id = {r.id: r for r in runs}
    todo: dict[tuple, list[MergeRun]] = {}
    for m in plan(spec, runs):
        todo.setdefault(tuple(m.parents), []).append(m)
    results: dict[str, Any] = {}
    for parents, merges in todo.items():
        dirs = [root / "runs" / p for p in parents]
        if not all((d / "metrics.json").exists() and (d / "train" / "adapter" / "adapter_config.json").exists()
                   for d in dirs):
            for m in merges:
                results[m.id] = {"name": m.name, "group": m.group, "state": "skipped: a parent run did not finish"}
            continue
        gdir = root / "merges" / _slug(merges[0].group, parents)
        try:
            results.update(_merge_group(block, by_id, parents, dirs, merges, gdir, progress))
        except Exception as e:  # a failing group is data: recorded, the others go on
            for m in merges:
                results[m.id] = {"name": m.name, "group": m.group, "state": "failed", "error": f"{type(e).__name__}: {e}"}
    write_json(root / "merges.json", results)
    return results


def _merge_group(block: MergeBlock, by_id: dict, parents: tuple, dirs: list[Path], merges: list[MergeRun],
                 gdir: Path, progress: bool) -> dict[str, Any]:
    from ..io import read_json
    from ..merge import MergeConfig, merge

    results: dict[str, Any] = {}
    folders = []
    for m in merges:
        f = gdir / m.name
        if not (f / "loralab.json").exists():
            merge(MergeConfig(**m.fields, parents=[str(d / "train" / "adapter") for d in dirs], out=str(f),
                              overwrite=True))
        folders.append(str(f))
    heldout = {}
    for p, d in zip(parents, dirs):
        data = read_json(d / "data.json")
        dom = _name(str(by_id[p].labels[block.parents]), heldout)
        heldout[dom] = data["heldout_raw"]
        if data.get("heldout_qa"):
            heldout[f"{dom}_qa"] = data["heldout_qa"]
    run0 = by_id[parents[0]]
    fields = {k: v for k, v in {**run0.config.eval, **block.eval}.items()
              if k not in ("foreign", "extra_eval", "eval_data", "adapters", "out", "model")}
    fields.setdefault("contamination", False)  # merges are compared in-domain and on general tasks
    res = evaluate_merges(folders, [str(d / "train" / "adapter") for d in dirs], out=str(gdir / "eval"),
                          model=run0.config.model, heldout=heldout, seed=run0.config.seed, progress=progress,
                          **fields)
    for m, (name, r) in zip(merges, res["merges"].items()):
        results[m.id] = {"name": m.name, "group": m.group, "parents": list(parents), "state": "done",
                         "folder": str(gdir / m.name), "beats_both": [x["metric"] for x in r["rows"] if x["beats_both"]],
                         "beats_both_significant": [x["metric"] for x in r["rows"] if x["beats_both_significant"]]}
    results[f"table:{gdir.name}"] = {"group": merges[0].group, "table": res["table"], "findings": res["findings"],
                                     "parents": res["parents"], "comparison": str(gdir / "eval" / "comparison.json")}
    return results


def _slug(group: dict, parents) -> str:
    from .spec import digest

    label = "-".join(re.sub(r"\W+", "_", str(v)) for v in group.values())
    return (label + "-" if label else "") + digest(list(parents), 8)


# ------------------------------------------------------------------ findings

def _ci(x: dict | None, scale: float = 1.0, fmt: str = "{:+.3f}") -> str:
    if not x or x.get("mean") is None or math.isnan(x["mean"]):
        return "n/a"
    return f"{fmt.format(x['mean'] * scale)} [{fmt.format(x['lo'] * scale)}, {fmt.format(x['hi'] * scale)}]"


def markdown_table(summary: dict[str, Any]) -> list[str]:
    """The gain table of `evaluate_merges` as Markdown: gains in nats/token, accuracy change in points."""
    rows = summary["table"]
    sets = [k for k in rows[0] if k.startswith("gain ")] if rows else []
    head = ["model", *[f"{k} (nats/token)" for k in sets], "general acc Δ (pts)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        out.append("| " + " | ".join([r["model"], *[_ci(r.get(k)) for k in sets],
                                      _ci(r.get("general acc change"), 100, "{:+.1f}")]) + " |")
    return out


def findings(summary: dict[str, Any]) -> list[str]:
    """Sentences computed from the numbers: how much of each parent's in-domain gain every merge
    keeps, and where a merge beats both parents (point estimate, and with Holm-adjusted p < 0.05)."""
    rows = {r["model"]: r for r in summary["table"]}
    parents = summary["parents"]
    sets = [k for k in summary["table"][0] if k.startswith("gain ")] if summary["table"] else []
    best = {k: max(parents, key=lambda p: (rows[p].get(k) or {}).get("mean", -math.inf)) for k in sets}
    out = []
    for name, m in summary["merges"].items():
        keeps = []
        for k in sets:
            g, ref = (rows[name].get(k) or {}).get("mean"), (rows[best[k]].get(k) or {}).get("mean")
            if g is not None and ref and ref > 0:
                keeps.append(f"{100 * g / ref:.0f} % of {best[k]}'s {k[5:]} gain")
        sig = [r["metric"] for r in m["rows"] if r["beats_both_significant"]]
        point = [r["metric"] for r in m["rows"] if r["beats_both"] and not r["beats_both_significant"]]
        line = f"{name} keeps " + (", ".join(keeps) if keeps else "no measurable in-domain gain")
        line += f"; general accuracy {_ci(rows[name].get('general acc change'), 100, '{:+.1f}')} points vs base"
        if sig:
            line += f"; beats both parents on {', '.join(sig)} (every Holm-adjusted p < 0.05)"
        if point:
            line += f"; ahead of both on the point estimate only: {', '.join(point)}"
        if not sig and not point:
            line += "; beats neither parent on every metric"
        out.append(line + ".")
    if summary["merges"] and not any(r["beats_both_significant"] for m in summary["merges"].values() for r in m["rows"]):
        out.append("No merge beats both parents on any metric once the comparisons are Holm-corrected.")
    return out
