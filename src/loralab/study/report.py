"""The study report: `results.csv` + one self-contained `report.html` (plots embedded).

Everything in the report is read back from the run folders (config.json,
metrics.json, train/train_log.jsonl, the scored data folders), so the page and the
CSV always match what the runs wrote.

Run metrics schema (written by study/evaluation.py), all losses in nats/token:
  in_domain.<form>.{base_loss, adapter_loss, gain, gain_ci}      form: raw | structured (held-out
                                                                  documents as text / as the runs' Q&A)
  forgetting.{base_acc, adapter_acc, delta, delta_ci, per_task}
  contamination.<domain>.{kl, js, style_leak}  (+ <domain>+trigger for trigger adapters)
  weights.{delta_fro, rel_delta, eff_rank, intruders}
  data.{n_train, ifd_mean, ppl_mean, loss_mean}
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
from pathlib import Path
from typing import Any

from ..io import atomic_open, iter_jsonl, read_json

Z95 = 1.959964


def load_runs(root: Path) -> list[dict]:
    """Every run folder of the study's current spec, with its config, status, metrics and curve.

    Folders left in `runs/` by an earlier version of the spec (not in study.json) are not
    part of this study's report.
    """
    study = root / "study.json"
    current = {r["id"] for r in read_json(study)["runs"]} if study.exists() else None
    runs = []
    for d in sorted((root / "runs").glob("*")):
        if not (d / "config.json").exists() or (current is not None and d.name not in current):
            continue
        cfg = read_json(d / "config.json")
        st = read_json(d / "status.json") if (d / "status.json").exists() else {"state": "pending"}
        m = read_json(d / "metrics.json") if (d / "metrics.json").exists() else None
        log = d / "train" / "train_log.jsonl"
        curve = list(iter_jsonl(log)) if log.exists() else []
        labels = cfg.get("labels", {})
        label = (str(next(iter(labels.values()))) if len(labels) == 1
                 else ", ".join(f"{k}={v}" for k, v in labels.items())) or d.name
        runs.append({"id": d.name, "dir": d, "config": cfg, "status": st, "metrics": m, "curve": curve,
                     "label": label})
    return runs


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, dict):
        for k, v in d.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(d, (list, tuple)) and len(d) == 2 and all(isinstance(x, (int, float)) for x in d):
        out[prefix[:-1] + ".lo"], out[prefix[:-1] + ".hi"] = d
    elif not isinstance(d, (list, tuple)):
        out[prefix[:-1]] = d
    return out


def write_csv(runs: list[dict], path: Path) -> None:
    rows = []
    for r in runs:
        row = {"id": r["id"], "state": r["status"]["state"], **{f"label.{k}": v for k, v in
                                                                r["config"].get("labels", {}).items()}}
        if r["metrics"]:
            row.update({k: v for k, v in flatten({k: v for k, v in r["metrics"].items() if k != "labels"}).items()
                        if not k.startswith(("data.scored", "data.train", "data.pool", "data.ingest", "data.held"))})
        rows.append(row)
    cols: list[str] = []
    for row in rows:
        cols += [c for c in row if c not in cols]
    with atomic_open(path) as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(rows)


def get(m: dict | None, path: str, default=None):
    for k in path.split("."):
        if not isinstance(m, dict) or k not in m:
            return default
        m = m[k]
    return m


def _se(ci) -> float:
    return (ci[1] - ci[0]) / (2 * Z95) if ci else float("nan")


def _fmt(x: float, nd: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def in_domain_form(m: dict) -> str:
    return "structured" if get(m, "in_domain.structured.gain") is not None else "raw"


def findings(runs: list[dict]) -> list[str]:
    """Sentences generated from the numbers: each pair of runs that differ in one label."""
    done = [r for r in runs if r["metrics"]]
    out = []
    if done:
        best = max(done, key=lambda r: get(r["metrics"], "in_domain.raw.gain", -1e9))
        g = get(best["metrics"], "in_domain.raw")
        out.append(f"Largest in-domain gain on held-out raw text: {best['label']} "
                   f"({_fmt(g['gain'])} nats/token, 95% CI {_fmt(g['gain_ci'][0])}..{_fmt(g['gain_ci'][1])}).")
        with_q = [r for r in done if get(r["metrics"], "in_domain.structured.gain") is not None]
        if with_q:
            bq = max(with_q, key=lambda r: get(r["metrics"], "in_domain.structured.gain"))
            q = get(bq["metrics"], "in_domain.structured")
            out.append(f"Largest in-domain gain on the held-out documents as Q&A: {bq['label']} "
                       f"({_fmt(q['gain'])} nats/token, 95% CI {_fmt(q['gain_ci'][0])}..{_fmt(q['gain_ci'][1])}).")
        safest = min(done, key=lambda r: abs(get(r["metrics"], "forgetting.delta", 0.0) or 0.0))
        f = get(safest["metrics"], "forgetting")
        if f:
            out.append(f"Least change in general-task accuracy: {safest['label']} "
                       f"({f['delta'] * 100:+.1f} points, 95% CI {f['delta_ci'][0] * 100:+.1f}..{f['delta_ci'][1] * 100:+.1f}).")
    for i, a in enumerate(done):
        for b in done[i + 1:]:
            la, lb = a["config"].get("labels", {}), b["config"].get("labels", {})
            diff = [k for k in set(la) | set(lb) if la.get(k) != lb.get(k)]
            if len(diff) != 1:
                continue
            k = diff[0]
            ga, gb = get(a["metrics"], "in_domain.raw"), get(b["metrics"], "in_domain.raw")
            fa, fb = get(a["metrics"], "forgetting"), get(b["metrics"], "forgetting")
            if not (ga and gb):
                continue
            dg = ga["gain"] - gb["gain"]
            seg = math.hypot(_se(ga["gain_ci"]), _se(gb["gain_ci"])) * Z95
            s = (f"{la.get(k)} {'beat' if dg > 0 else 'trailed'} {lb.get(k)} ({k}) on in-domain gain by "
                 f"{abs(dg):.3f} ± {seg:.3f} nats/token")
            if fa and fb:
                df = fa["delta"] - fb["delta"]
                sef = math.hypot(_se(fa["delta_ci"]), _se(fb["delta_ci"])) * Z95
                if abs(df) < 5e-4:
                    s += f"; general accuracy changed the same (± {sef * 100:.1f} points)"
                else:
                    s += (f", while its general accuracy moved {abs(df) * 100:.1f} ± {sef * 100:.1f} points "
                          f"{'higher' if df > 0 else 'lower'}")
            sig = abs(dg) > seg
            out.append(s + (" (gain difference outside the 95% interval)." if sig else " (within noise)."))
    return out


# ------------------------------------------------------------------ plots

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def plot_pareto(runs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pts = []
    for r in runs:
        m = r["metrics"]
        g, f = get(m, "in_domain.raw"), get(m, "forgetting")
        if not (g and f):
            continue
        x, y = -f["delta"] * 100, g["gain"]
        ax.errorbar(x, y, xerr=_se(f["delta_ci"]) * Z95 * 100, yerr=_se(g["gain_ci"]) * Z95, fmt="o", capsize=3)
        ax.annotate(r["label"], (x, y), textcoords="offset points", xytext=(5, 5), fontsize=8)
        pts.append((x, y))
    front = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts))
    if len(front) > 1:
        ax.plot(*zip(*front), "--", color="grey", lw=1, label="Pareto front")
        ax.legend(fontsize=8)
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("forgetting: general accuracy lost (points)")
    ax.set_ylabel("in-domain gain (nats/token, held-out)")
    ax.set_title("Gain vs forgetting (95% CIs)")
    return _png(fig)


def plot_contamination(runs):
    import matplotlib.pyplot as plt
    import numpy as np

    rows = [r for r in runs if get(r["metrics"], "contamination")]
    if not rows:
        return None
    cols = sorted({k for r in rows for k in r["metrics"]["contamination"]})
    mat = np.array([[get(r["metrics"], f"contamination.{c}", {}).get("kl", np.nan) for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(1.4 + 1.1 * len(cols), 0.9 + 0.45 * len(rows)))
    im = ax.imshow(mat, cmap="magma_r", aspect="auto")
    ax.set_xticks(range(len(cols)), cols, rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), [r["label"] for r in rows], fontsize=8)
    for i in range(mat.shape[0]):
        for j in range(mat.shape[1]):
            if not np.isnan(mat[i, j]):
                ax.text(j, i, f"{mat[i, j]:.2g}", ha="center", va="center", fontsize=8,
                        color="white" if mat[i, j] > np.nanmax(mat) / 2 else "black")
    fig.colorbar(im, ax=ax, label="mean per-token KL(base ‖ adapter)")
    ax.set_title("Contamination of foreign domains")
    return _png(fig)


def score_values(run: dict, field: str) -> list[float]:
    p = get(run["metrics"], "data.paths.scored") or (run["metrics"] or {}).get("data", {}).get("scored")
    if not p or not Path(p, "records.jsonl").exists():
        return []
    out = []
    for row in iter_jsonl(Path(p) / "records.jsonl"):
        v = (row.get("meta", {}).get("score") or {}).get(field)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out.append(v)
    return out


def plot_distributions(runs):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    seen = set()
    for r in runs:
        if not r["metrics"]:
            continue
        key = (r["metrics"].get("data") or {}).get("scored")
        if key in seen:
            continue
        seen.add(key)
        ifd = score_values(r, "ifd")
        ppl = score_values(r, "ppl_cond") or score_values(r, "ppl")
        name = r["label"]
        if ifd:
            axes[0].hist(ifd, bins=30, alpha=0.5, label=name)
        if ppl:
            axes[1].hist([math.log(x) for x in ppl], bins=30, alpha=0.5, label=name)
    axes[0].set_title("IFD of training examples")
    axes[0].set_xlabel("IFD = loss(resp | prompt) / loss(resp)")
    axes[1].set_title("Perplexity of training examples")
    axes[1].set_xlabel("log perplexity under the base model")
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return _png(fig)


def plot_dw_vs_ppl(runs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for r in runs:
        dw, ppl = get(r["metrics"], "weights.delta_fro"), get(r["metrics"], "data.ppl_mean")
        if dw is None or ppl is None:
            continue
        ax.scatter(ppl, dw)
        ax.annotate(r["label"], (ppl, dw), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs = [c.get_offsets()[0][0] for c in ax.collections]
    if xs and max(xs) / max(min(xs), 1e-9) > 10:
        ax.set_xscale("log")
    ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4)) if ax.get_xscale() == "linear" else None
    ax.set_xlabel("training-data perplexity under the base model (mean)")
    ax.set_ylabel("adapter ‖s·BA‖_F (sum over layers)")
    ax.set_title("Weight change vs how familiar the data is")
    return _png(fig)


def plot_curves(runs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in runs:
        pts = [(x["step"], x["loss"]) for x in r["curve"] if x.get("loss") is not None]
        ev = [(x["step"], x["eval_loss"]) for x in r["curve"] if x.get("eval_loss") is not None]
        if pts:
            line, = ax.plot(*zip(*pts), lw=1, label=r["label"])
            if ev:
                ax.plot(*zip(*ev), "o--", color=line.get_color(), ms=3, lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token); dashed: held-out")
    ax.set_title("Training curves")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    return _png(fig)


# ------------------------------------------------------------------- page

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;background:#f6f7f9;color:#1d2330}
header{background:#1d2330;color:#fff;padding:22px 40px}header h1{margin:0;font-size:24px}
header p{margin:4px 0 0;color:#c9d1e0}main{padding:24px 40px;max-width:1200px}
section{background:#fff;border-radius:10px;padding:18px 24px;margin:0 0 20px;box-shadow:0 1px 3px rgba(0,0,0,.08)}
h2{font-size:18px;margin:0 0 12px}table{border-collapse:collapse;width:100%;font-size:13px}
th,td{padding:6px 8px;border-bottom:1px solid #e5e8ee;text-align:right}th:first-child,td:first-child{text-align:left}
th{background:#f0f2f6}.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:16px}
img{max-width:100%}.ok{color:#1a7f37}.bad{color:#c62828}li{margin:4px 0}.muted{color:#667}
"""


def _gain(g: dict | None) -> str:
    if not g:
        return "n/a"
    return f"{_fmt(g.get('gain'))} [{_fmt(g['gain_ci'][0])}, {_fmt(g['gain_ci'][1])}]"


def _table(runs: list[dict]) -> str:
    head = ("<tr><th>run</th><th>state</th><th>train n</th><th>IFD mean</th><th>held-out loss base → adapter</th>"
            "<th>gain [95% CI]</th><th>gain on held-out Q&amp;A [95% CI]</th><th>general acc Δ (pts) [95% CI]</th><th>max foreign KL</th><th>‖ΔW‖</th></tr>")
    body = []
    for r in runs:
        m, st = r["metrics"] or {}, r["status"]["state"]
        g, f = get(m, "in_domain.raw") or {}, get(m, "forgetting") or {}
        kl = [v.get("kl") for v in (m.get("contamination") or {}).values() if isinstance(v, dict) and v.get("kl") is not None]
        cls = "ok" if st == "done" else "bad"
        err = f"<div class='muted'>{html.escape(r['status'].get('error', '')[:200])}</div>" if st == "failed" else ""
        body.append(
            f"<tr><td>{html.escape(r['label'])}<div class='muted'>{r['id']}</div>{err}</td><td class='{cls}'>{st}</td>"
            f"<td>{get(m, 'data.n_train', '')}</td><td>{_fmt(get(m, 'data.ifd_mean'))}</td>"
            f"<td>{_fmt(g.get('base_loss'))} → {_fmt(g.get('adapter_loss'))}</td>"
            f"<td>{_fmt(g.get('gain'))} [{_fmt((g.get('gain_ci') or [None])[0])}, {_fmt((g.get('gain_ci') or [None, None])[1])}]</td>"
            f"<td>{_gain(get(m, 'in_domain.structured'))}</td>"
            f"<td>{_fmt(f.get('delta', float('nan')) * 100, 1)} [{_fmt((f.get('delta_ci') or [float('nan')])[0] * 100, 1)}, "
            f"{_fmt((f.get('delta_ci') or [0, float('nan')])[1] * 100, 1)}]</td>"
            f"<td>{_fmt(max(kl) if kl else None, 4)}</td><td>{_fmt(get(m, 'weights.delta_fro'), 2)}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def build(root: str | Path, spec: dict | None = None) -> Path:
    """Write results.csv and report.html for the study folder `root`; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    root = Path(root)
    runs = load_runs(root)
    write_csv(runs, root / "results.csv")
    study = read_json(root / "study.json") if (root / "study.json").exists() else {}
    spec = spec or study.get("spec", {})
    done = [r for r in runs if r["metrics"]]
    figs = [("Gain vs forgetting", plot_pareto(done)), ("Contamination", plot_contamination(done)),
            ("Training data: IFD and perplexity", plot_distributions(done)),
            ("‖ΔW‖ vs training-data perplexity", plot_dw_vs_ppl(done)), ("Loss curves", plot_curves(runs))]
    figs_html = "".join(f"<div><h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{src}'></div>"
                        for t, src in figs if src)
    finds = "".join(f"<li>{html.escape(s)}</li>" for s in findings(runs)) or "<li>No finished runs yet.</li>"
    n_done = sum(r["status"]["state"] == "done" for r in runs)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>loralab study: {html.escape(spec.get('name', root.name))}</title><style>{CSS}</style></head><body>
<header><h1>Study: {html.escape(spec.get('name', root.name))}</h1>
<p>{html.escape(spec.get('description', ''))}</p>
<p>base model {html.escape(str(spec.get('model', '')))} · {len(runs)} runs, {n_done} done</p></header><main>
<section id="findings"><h2>Findings</h2><ul>{finds}</ul>
<p class="muted">Differences between two runs combine their 95% intervals as independent estimates
(conservative: both are measured on the same items).</p></section>
<section id="runs"><h2>Runs</h2>{_table(runs)}</section>
<section id="plots" class="grid">{figs_html}</section>
<section><h2>Files</h2><p>results.csv (one row per run, every metric) and runs/&lt;id&gt;/ (config.json,
status.json, metrics.json, train/) beside this page.</p></section>
</main></body></html>"""
    with atomic_open(root / "report.html") as f:
        f.write(page)
    return root / "report.html"
