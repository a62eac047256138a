"""The study report: `results.csv` + one self-contained `report.html` (plots embedded).

Everything in the report is read back from the run folders (config.json,
metrics.json, train/train_log.jsonl, the scored data folders), so the page and the
CSV always match what the runs wrote.

Run metrics schema (written by study/evaluation.py), all losses in nats/token:
  in_domain.<form>.{base_loss, adapter_loss, gain, gain_ci, p, overlap}   form: raw | structured
                        (held-out documents as text / as Q&A made by one fixed procedure);
                        gain = token-weighted loss difference base − adapter, its interval the
                        cluster bootstrap over records of that same statistic
  forgetting.{base_acc, adapter_acc, delta, delta_ci, p, per_task}  (own-domain tasks left out)
  contamination.<domain>.{kl, kl_ci, js, js_ci, style_leak, style_leak_ci, prompts}
  weights.{delta_fro, rel_delta, eff_rank, intruders}
  data.{n_train, ifd_mean, ppl_mean, loss_mean}
  items.*               per-item vectors for paired comparisons between runs (not in the CSV)

Every `X_ci` is the 95 % interval of `X`'s own statistic. Comparisons between runs are
paired on the same items and their p-values adjusted for the number of comparisons
(Holm–Bonferroni), see `comparisons`.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import math
from pathlib import Path
from typing import Any

from ..evaluate.stats import CORRECTION_NAMES, CORRECTIONS, paired_ratio_diff, pooled_mean_ci
from ..io import atomic_open, iter_jsonl, read_json, write_json
from . import seeds as S

Z95 = 1.959964
CORRECTION = "holm"  # multiple-comparison correction of the findings
# with seeds, every pair of variants that differ in one label is screened (hundreds of pairs):
# an exploratory table, so false-discovery control; the spec's declared questions (FINDINGS.md)
# are the confirmatory family, Holm-corrected with finer p-values
SEEDED_CORRECTION = "bh"
ALPHA = 0.05
COMPARE_RESAMPLES = 2000  # the report's screens (per run, and across seeds)


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
        row = {"id": r["id"], "state": r["status"]["state"], "error": r["status"].get("error", ""),
               **{f"label.{k}": v for k, v in r["config"].get("labels", {}).items()}}
        if r["metrics"]:
            row.update({k: v for k, v in flatten({k: v for k, v in r["metrics"].items()
                                                  if k not in ("labels", "items")}).items()
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


def _paired(a: dict, b: dict, what: str) -> dict | None:
    """Run a − run b on the same items for one measure; None when they were not measured on the same items.

    gain.<form>   in-domain gain difference = b's adapter loss − a's adapter loss (the base cancels),
                  token-weighted, cluster bootstrap over the shared records
    forgetting    macro mean over tasks of a's − b's per-item accuracy (general accuracy change)
    kl.<domain>   per-token KL difference on the same foreign prompts
    (the pairing of items is `seeds.paired_arrays`, shared with the across-seeds comparisons)
    """
    got = S.paired_arrays((a["metrics"] or {}).get("items") or {}, (b["metrics"] or {}).get("items") or {}, what)
    if got is None:
        return None
    kind, arrays = got
    kw = dict(resamples=COMPARE_RESAMPLES, seed=0)
    return paired_ratio_diff(*arrays, **kw) if kind == "ratio" else pooled_mean_ci(arrays, **kw)


def comparisons(runs: list[dict], correction: str = CORRECTION) -> list[dict]:
    """Every pair of finished runs that differ in one label, on every measure both carry, paired on
    the same items; p-values adjusted together (`correction`) over all of them."""
    done = [r for r in runs if r["metrics"]]
    out = []
    for a, b, axis in S.one_label_pairs(done, lambda r: r["config"].get("labels", {})):
        whats = [f"gain.{f}" for f in ("raw", "structured")]
        whats += ["forgetting"]
        whats += [f"kl.{d}" for d in sorted((a["metrics"].get("contamination") or {}))
                  if "+" not in d and d in (b["metrics"].get("contamination") or {})]
        for what in whats:
            d = _paired(a, b, what)
            if d is None or d.get("n", 0) == 0:
                continue
            out.append({"a": a["label"], "b": b["label"], "axis": axis, "measure": what, **d})
    adj = CORRECTIONS[correction]([c["p"] for c in out])
    for c, p in zip(out, adj):
        c["p_adj"] = p
        c["significant"] = bool(p <= ALPHA)
    return out


def _cmp_sentence(c: dict) -> str:
    name, unit, k = S.describe(c["measure"])
    verdict = "significant" if c["significant"] else "not significant"
    return (f"{c['a']} − {c['b']} ({c['axis']}): {name} {c['mean'] * k:+.3f} {unit} "
            f"[95% CI {c['lo'] * k:+.3f}, {c['hi'] * k:+.3f}], paired over {c['n']} items; "
            f"adjusted p = {c['p_adj']:.3g} ({verdict} at {ALPHA:g}).")


def findings(runs: list[dict], cmps: list[dict] | None = None) -> list[str]:
    """Sentences generated from the numbers: the best runs, then every paired comparison."""
    done = [r for r in runs if r["metrics"]]
    out = []
    if done:
        best = max(done, key=lambda r: get(r["metrics"], "in_domain.raw.gain", -1e9))
        g = get(best["metrics"], "in_domain.raw")
        if g:
            out.append(f"Largest in-domain gain on held-out raw text: {best['label']} "
                       f"({_fmt(g['gain'])} nats/token, 95% CI {_fmt(g['gain_ci'][0])}..{_fmt(g['gain_ci'][1])}).")
        with_q = [r for r in done if get(r["metrics"], "in_domain.structured.gain") is not None]
        if with_q:
            bq = max(with_q, key=lambda r: get(r["metrics"], "in_domain.structured.gain"))
            q = get(bq["metrics"], "in_domain.structured")
            out.append(f"Largest in-domain gain on the held-out documents as Q&A: {bq['label']} "
                       f"({_fmt(q['gain'])} nats/token, 95% CI {_fmt(q['gain_ci'][0])}..{_fmt(q['gain_ci'][1])}).")
        with_f = [r for r in done if get(r["metrics"], "forgetting")]
        if with_f:
            safest = min(with_f, key=lambda r: abs(get(r["metrics"], "forgetting.delta", 0.0) or 0.0))
            f = get(safest["metrics"], "forgetting")
            out.append(f"Least change in general-task accuracy: {safest['label']} "
                       f"({f['delta'] * 100:+.1f} points, 95% CI {f['delta_ci'][0] * 100:+.1f}..{f['delta_ci'][1] * 100:+.1f}).")
        for r in done:
            for form, g in (get(r["metrics"], "in_domain") or {}).items():
                if g.get("overlap"):
                    out.append(f"WARNING: {r['label']}: {g['overlap']} of {g['records']} held-out {form} records are "
                               "training examples of its adapter; its in-domain gain is not held-out.")
    cmps = comparisons(runs) if cmps is None else cmps
    out += [_cmp_sentence(c) for c in cmps]
    failed = [r for r in runs if r["status"].get("state") == "failed"]
    if failed:
        out.append(f"{len(failed)} run(s) failed: " + "; ".join(
            f"{r['label']}: {r['status'].get('error', '')[:160]}" for r in failed) + ".")
    return out


def weights_line(runs: list[dict], spec: dict) -> str:
    """Which weights and data produced every number of the study."""
    w = next((get(r["metrics"], "model.weights") for r in runs if get(r["metrics"], "model.weights")), None)
    if w is None:
        from ..evaluate.run import weights_of

        w = weights_of(str(spec.get("model", "")))
    datas = [(r.get("config") or {}).get("data") for r in runs if r.get("metrics")] or [spec.get("data") or {}]
    seen: dict[str, None] = {}
    for data in filter(None, datas):  # every source the finished runs read, in first-seen order
        src = ", ".join(map(str, data.get("sources") or []))
        seen[f"{src} (domain {data.get('domain') or 'as ingested'}, "
             f"{int(float(data.get('eval_docs', 0.2)) * 100)} % of documents held out per seed)"] = None
    return f"Weights: {w}. Data: {'; '.join(seen) or 'none'}."


def terminal_rows(runs: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The results table as plain strings (the CLI prints it; the page has its own)."""
    head = ["run", "state", "train n", "gain raw [95% CI]", "gain Q&A [95% CI]", "general acc Δ pts [95% CI]",
            "foreign KL [95% CI]", "‖ΔW‖", "error"]
    rows = []
    for r in runs:
        m = r["metrics"] or {}
        kl = [(k, v) for k, v in (m.get("contamination") or {}).items() if "+" not in k and v.get("kl") is not None]
        f = get(m, "forgetting")
        rows.append([r["label"], r["status"]["state"], str(get(m, "data.n_train", "")),
                     _gain(get(m, "in_domain.raw")), _gain(get(m, "in_domain.structured")),
                     (f"{f['delta'] * 100:+.1f} [{f['delta_ci'][0] * 100:+.1f}, {f['delta_ci'][1] * 100:+.1f}]"
                      if f else "n/a"),
                     "; ".join(f"{k} {_fmt(v['kl'], 4)} [{_fmt(v['kl_ci'][0], 4)}, {_fmt(v['kl_ci'][1], 4)}]"
                               for k, v in kl) or "n/a",
                     _fmt(get(m, "weights.delta_fro"), 2), r["status"].get("error", "")[:120]])
    return head, rows


# ------------------------------------------------------------------ plots

def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


MARKERS = "osD^vP*Xh<>p"


def _style(i: int) -> dict:
    """A distinct colour + marker per run, so runs are told apart by the legend, not by labels
    written beside the points (those overlap when runs land close together)."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {"color": cycle[i % len(cycle)], "marker": MARKERS[i % len(MARKERS)]}


def _legend_outside(ax) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False)


def plot_pareto(runs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.6, 4.2))
    pts = []
    for i, r in enumerate(runs):
        m = r["metrics"]
        g, f = get(m, "in_domain.raw"), get(m, "forgetting")
        if not (g and f):
            continue
        x, y = -f["delta"] * 100, g["gain"]
        st = _style(i)
        # asymmetric bars: the bootstrap interval of each statistic as measured
        xerr = [[x - (-f["delta_ci"][1] * 100)], [(-f["delta_ci"][0] * 100) - x]]
        yerr = [[y - g["gain_ci"][0]], [g["gain_ci"][1] - y]]
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=st["marker"], color=st["color"], capsize=3, label=r["label"])
        pts.append((x, y))
    front = sorted(p for p in pts if not any(q[0] <= p[0] and q[1] >= p[1] and q != p for q in pts))
    if len(front) > 1:
        ax.plot(*zip(*front), "--", color="grey", lw=1, label="Pareto front")
    ax.axvline(0, color="k", lw=0.5)
    ax.set_xlabel("forgetting: general accuracy lost (percentage points)")
    ax.set_ylabel("in-domain gain (nats/token, held-out text)")
    ax.set_title("Gain vs forgetting (bars: 95% bootstrap intervals)")
    _legend_outside(ax)
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
    fig.colorbar(im, ax=ax, label="per-token KL(base ‖ adapter) (nats/token)")
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
    axes[0].set_xlabel("IFD = loss(resp | prompt) / loss(resp) (ratio)")
    axes[0].set_ylabel("training examples")
    axes[1].set_ylabel("training examples")
    axes[1].set_title("Perplexity of training examples")
    axes[1].set_xlabel("log perplexity under the base model (nats/token)")
    for a in axes:
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=7)
    return _png(fig)


def plot_dw_vs_ppl(runs):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.2, 4))
    xs = []
    for i, r in enumerate(runs):
        dw, ppl = get(r["metrics"], "weights.delta_fro"), get(r["metrics"], "data.ppl_mean")
        if dw is None or ppl is None:
            continue
        st = _style(i)
        ax.scatter(ppl, dw, color=st["color"], marker=st["marker"], s=40, label=r["label"])
        xs.append(ppl)
    if xs and max(xs) / max(min(xs), 1e-9) > 10:
        ax.set_xscale("log")
    ax.set_xlabel("training-data perplexity under the base model (mean, per token)")
    ax.set_ylabel("adapter ‖s·BA‖_F, summed over layers (weight units)")
    ax.set_title("Weight change vs how familiar the data is")
    _legend_outside(ax)
    return _png(fig)


def plot_curves(runs):
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(7.6, 4))
    any_eval = False
    for i, r in enumerate(runs):
        pts = [(x["step"], x["loss"]) for x in r["curve"] if x.get("loss") is not None]
        ev = [(x["step"], x["eval_loss"]) for x in r["curve"] if x.get("eval_loss") is not None]
        if pts:
            line, = ax.plot(*zip(*pts), lw=1, color=_style(i)["color"], label=r["label"])
            if ev:
                ax.plot(*zip(*ev), "o--", color=line.get_color(), ms=3, lw=0.8)
                any_eval = True
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title("Training curves" + ("" if any_eval else " (training loss)"))
    if any_eval:  # the legend promises dashed held-out curves only when some are drawn
        ax.add_line(Line2D([], [], ls="--", marker="o", ms=3, color="grey", lw=0.8, label="held-out (dashed)"))
    _legend_outside(ax)
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
            "<th>gain [95% CI]</th><th>gain on held-out Q&amp;A [95% CI]</th><th>general acc Δ (pts) [95% CI]</th>"
            "<th>foreign KL [95% CI]</th><th>‖ΔW‖</th><th>error</th></tr>")
    body = []
    for r in runs:
        m, st = r["metrics"] or {}, r["status"]["state"]
        g, f = get(m, "in_domain.raw"), get(m, "forgetting")
        kl = [(k, v) for k, v in (m.get("contamination") or {}).items() if "+" not in k and v.get("kl") is not None]
        cls = "ok" if st == "done" else "bad"
        fcell = (f"{f['delta'] * 100:+.1f} [{f['delta_ci'][0] * 100:+.1f}, {f['delta_ci'][1] * 100:+.1f}]"
                 if f else "n/a")
        kcell = "<br>".join(f"{html.escape(k)} {_fmt(v['kl'], 4)} [{_fmt(v['kl_ci'][0], 4)}, {_fmt(v['kl_ci'][1], 4)}]"
                            f" <span class='muted'>n={v.get('prompts')}</span>" for k, v in kl) or "n/a"
        body.append(
            f"<tr><td>{html.escape(r['label'])}<div class='muted'>{r['id']}</div></td><td class='{cls}'>{st}</td>"
            f"<td>{get(m, 'data.n_train', '')}</td><td>{_fmt(get(m, 'data.ifd_mean'))}</td>"
            f"<td>{_fmt((g or {}).get('base_loss'))} → {_fmt((g or {}).get('adapter_loss'))}</td>"
            f"<td>{_gain(g)}</td><td>{_gain(get(m, 'in_domain.structured'))}</td><td>{fcell}</td>"
            f"<td>{kcell}</td><td>{_fmt(get(m, 'weights.delta_fro'), 2)}</td>"
            f"<td class='bad'>{html.escape(r['status'].get('error', '')[:300])}</td></tr>")
    return f"<table>{head}{''.join(body)}</table>"


def seeded_findings(runs: list[dict], agg: list[dict], cmps: list[dict]) -> list[str]:
    """Sentences from the seed-aggregated numbers: the best variant per measure, then every
    comparison (findings first), then failures."""
    out = []
    for what, better in (("gain.raw", max), ("gain.structured", max)):
        rows = [a for a in agg if a["measure"] == what]
        if rows:
            b = better(rows, key=lambda a: a["mean"])
            name, unit, k = S.describe(what)
            d = S.result_decimals(b, k)
            out.append(f"Largest {name}: {b['variant']} ({S.fmt(b['mean'], k, d, False)} {unit}, 95% CI over "
                       f"seeds (t) [{S.fmt(b['lo'], k, d, False)}, {S.fmt(b['hi'], k, d, False)}], "
                       f"{b['n_seeds']} seeds).")
    out += [S.sentence(c) for c in sorted(cmps, key=lambda c: (not c["finding"], c["p_adj"]))]
    failed = [r for r in runs if r["status"].get("state") == "failed"]
    if failed:
        out.append(f"{len(failed)} run(s) failed: " + "; ".join(
            f"{r['label']}: {r['status'].get('error', '')[:160]}" for r in failed) + ".")
    return out


def _seeds_table(agg: list[dict]) -> str:
    head = ("<tr><th>variant</th><th>measure</th><th>seeds</th><th>mean</th><th>95% CI over seeds (t)</th>"
            "<th>items only (given these models)</th><th>per seed</th></tr>")
    body = []
    for a in agg:
        name, unit, k = S.describe(a["measure"])
        d = S.result_decimals(a, k)
        body.append(f"<tr><td>{html.escape(a['variant'])}</td><td>{html.escape(name)} ({unit})</td>"
                    f"<td>{a['n_seeds']}</td><td>{S.fmt(a['mean'], k, d, False)}</td>"
                    f"<td>[{S.fmt(a['lo'], k, d, False)}, {S.fmt(a['hi'], k, d, False)}]</td>"
                    f"<td>[{S.fmt(a['items']['lo'], k, d, False)}, {S.fmt(a['items']['hi'], k, d, False)}]</td>"
                    f"<td>{', '.join(S.fmt(x, k, d, False) for x in a['per_seed'])}</td></tr>")
    return (f"<section id='seeds'><h2>Across seeds</h2><p class='muted'>Each variant's mean over its seeds; "
            f"the interval is Student t over the per-seed estimates (the training run is the unit), unadjusted; "
            f"the items-only interval holds the trained models fixed.</p>"
            f"<table>{head}{''.join(body)}</table></section>")


def build(root: str | Path, spec: dict | None = None) -> Path:
    """Write results.csv, findings.json and report.html for the study folder `root`; returns the page's path."""
    import matplotlib

    matplotlib.use("Agg")
    root = Path(root)
    runs = load_runs(root)
    write_csv(runs, root / "results.csv")
    study = read_json(root / "study.json") if (root / "study.json").exists() else {}
    spec = spec or study.get("spec", {})
    done = [r for r in runs if r["metrics"]]
    source = weights_line(runs, spec)
    seeded = any(len(v["seeds"]) > 1 for v in S.variants(runs))
    agg: list[dict] = []
    if seeded:  # replicates: variants aggregated over seeds, compared within seeds
        agg = S.aggregate(runs)
        cmps = S.compare(runs, correction=SEEDED_CORRECTION, resamples=COMPARE_RESAMPLES)
        finds = seeded_findings(runs, agg, cmps)
        note = (f"Variants are aggregated over their seeds (mean of per-seed estimates); comparisons are paired "
                f"within each seed on the same items (matched by id) and judged at the level of seeds: Student t "
                f"over the per-seed differences, interval unadjusted (the items-only interval, "
                f"{COMPARE_RESAMPLES:,} resamples, holds the trained models fixed). Every pair of variants that "
                f"differ in one label is screened, so the {len(cmps)} p-values are adjusted with "
                f"{CORRECTION_NAMES[SEEDED_CORRECTION]}; a spec's declared questions are answered with Holm's "
                f"correction over their declared family (`--findings`). A difference is a finding only when its "
                f"adjusted seed-level p < {ALPHA:g}.")
    else:
        cmps = comparisons(runs)
        finds = findings(runs, cmps)
        note = (f"Comparisons between runs are paired on the same items (records, benchmark items, prompts); "
                f"their p-values (two-sided bootstrap) are adjusted with {CORRECTION_NAMES[CORRECTION]} over "
                f"the {len(cmps)} comparisons of this report.")
    write_json(root / "findings.json", {"weights": source, "correction": SEEDED_CORRECTION if seeded else CORRECTION,
                                         "note": note,
                                         "findings": finds, "comparisons": cmps,
                                         **({"seeds": {"aggregate": agg}} if seeded else {})})
    figs = [("Gain vs forgetting", plot_pareto(done)), ("Contamination", plot_contamination(done)),
            ("Training data: IFD and perplexity", plot_distributions(done)),
            ("‖ΔW‖ vs training-data perplexity", plot_dw_vs_ppl(done)), ("Loss curves", plot_curves(runs))]
    figs_html = "".join(f"<div><h2>{html.escape(t)}</h2><img alt='{html.escape(t)}' src='{src}'></div>"
                        for t, src in figs if src)
    items = "".join(f"<li>{html.escape(s)}</li>" for s in finds) or "<li>No finished runs yet.</li>"
    n_done = sum(r["status"]["state"] == "done" for r in runs)
    n_failed = sum(r["status"]["state"] == "failed" for r in runs)
    page = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">
<title>loralab study: {html.escape(spec.get('name', root.name))}</title><style>{CSS}</style></head><body>
<header><h1>Study: {html.escape(spec.get('name', root.name))}</h1>
<p>{html.escape(spec.get('description', ''))}</p>
<p>base model {html.escape(str(spec.get('model', '')))} · {len(runs)} runs, {n_done} done, {n_failed} failed</p>
<p>{html.escape(source)}</p></header><main>
<section id="findings"><h2>Findings</h2><ul>{items}</ul>
<p class="muted">{html.escape(note)} Every interval is a 95 % interval of the statistic it follows, unadjusted for multiplicity.</p></section>
{_seeds_table(agg) if seeded else ""}
<section id="runs"><h2>Runs</h2>{_table(runs)}</section>
<section id="plots" class="grid">{figs_html}</section>
<section><h2>Files</h2><p>results.csv (one row per run, every metric, an error column), findings.json and
runs/&lt;id&gt;/ (config.json, status.json, metrics.json, train/) beside this page.</p></section>
</main></body></html>"""
    with atomic_open(root / "report.html") as f:
        f.write(page)
    return root / "report.html"
