"""Would "none" examples from other people's general prompts keep a router off a kind of traffic it never saw?

    .venv/bin/python benchmarks/routing/loso.py --registry runs/route/registry \
        --external runs/routing/external.jsonl runs/routing/users.jsonl --out runs/route/loso.json

The README's advice for a router that activates adapters on general traffic is to add general
prompts to the registry's `examples.jsonl` as "none". This measures that advice where it cannot
be flattered by the test: leave one general source out. The general prompts of the external files
come from nine sources (exam and quiz sets: Jeopardy history and word-origin clues, MMLU
humanities stems, GSM8K, MBPP; users' questions: FiQA, ASDiv, CommonsenseQA, Social IQA,
everyday sentences). For each source S, the router is fitted as `route --eval --fit-on-tune`
fits it (the one writer's tune half as written examples, the records beside them) plus `--per`
prompts of each *other* general source added as "none" examples, and measured on

- S: false activation on all of S's prompts (none of them, nor anything from S, was fitted);
- the domain prompts of the external files: accuracy (none of them was fitted either);
- the one writer's report half: accuracy and false activation.

Each figure is paired with the plain router's on the same prompts (B − A, paired bootstrap).
The classifier's temperature and threshold come, as always, from out-of-fold predictions on its
written examples, now including the added ones.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np

from loralab.embed import embed_e5
from loralab.evaluate.routing import read_prompts, tune_examples, tune_split
from loralab.evaluate.stats import bootstrap_ci, paired_diff_ci
from loralab.io import write_json
from loralab.serve.router import Router, read_registry, registry_settings


def memo(fn):
    """`fn` (texts -> unit vectors) with every text embedded once per process."""
    seen: dict[str, np.ndarray] = {}

    def embed(texts):
        new = [t for t in dict.fromkeys(texts) if t not in seen]
        if new:
            for t, v in zip(new, fn(new)):
                seen[t] = v
        return np.stack([seen[t] for t in texts]) if texts else np.zeros((0, 384), np.float32)

    embed.cache_name = fn.cache_name
    return embed


def routed(router, rows, domain_of) -> list[str]:
    """Each row's routed domain, or "base"."""
    out = []
    for d in router.route_many([r["text"] for r in rows]):
        out.append(domain_of.get(d.adapters[0][0], d.adapters[0][0]) if d.adapters else "base")
    return out


def figures(got: list[str], rows: list[dict]) -> tuple[list[float], list[float]]:
    """(hits on domain rows, activations on general rows)."""
    hits = [float(g == r["domain"]) for g, r in zip(got, rows) if r["domain"] != "general"]
    fired = [float(g != "base") for g, r in zip(got, rows) if r["domain"] == "general"]
    return hits, fired


def pct(c: dict) -> str:
    return f"{100 * c['mean']:.0f} [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}]"


def pts(c: dict) -> str:
    return f"{100 * c['mean']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}]"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registry", default="runs/route/registry")
    ap.add_argument("--prompts", default="benchmarks/routing/prompts.jsonl")
    ap.add_argument("--external", nargs="+", required=True)
    ap.add_argument("--per", type=int, default=50, help="none examples drawn from each other general source")
    ap.add_argument("--out", default="runs/route/loso.json")
    args = ap.parse_args()

    settings = dataclasses.replace(registry_settings(args.registry), threshold=None, max_false_activation=0.05)
    entries = read_registry(args.registry)[0]
    domain_of = {e.name: e.domain or e.name for e in entries}
    have = set(domain_of.values())
    written = [r for r in read_prompts(args.prompts) if r["domain"] == "general" or r["domain"] in have]
    examples = tune_examples(written, 0.5, seed=settings.seed)
    tune = tune_split([r["id"] for r in written], 0.5, settings.seed)
    report = [r for r in written if r["id"] not in tune]
    ext = [r for f in args.external for r in read_prompts(f) if r["domain"] == "general" or r["domain"] in have]
    sources = sorted({r["style"] for r in ext if r["domain"] == "general"})
    domain_rows = [r for r in ext if r["domain"] != "general"]
    embed = memo(embed_e5)
    cache = tempfile.mkdtemp(prefix="loralab-loso-")

    def fit(extra):
        return Router.from_registry(args.registry, embed=embed, cache_dir=cache, settings=settings,
                                    examples=examples + [(t, "none") for t in extra])

    plain = fit([])
    base_ext = routed(plain, ext, domain_of)
    base_rep = routed(plain, report, domain_of)
    by_id = {r["id"]: g for r, g in zip(ext, base_ext)}
    rng = np.random.default_rng(settings.seed)
    result = {"registry": args.registry, "external": args.external, "per": args.per, "sources": {}}
    print(f"{len(sources)} general sources; {len(domain_rows)} external domain prompts; report half {len(report)}")
    for s in sources:
        pool = []
        for other in sources:
            if other != s:
                texts = [r["text"] for r in ext if r["domain"] == "general" and r["style"] == other]
                pool += [texts[i] for i in sorted(rng.permutation(len(texts))[: args.per])]
        router = fit(pool)
        held = [r for r in ext if r["domain"] == "general" and r["style"] == s]
        g_held = routed(router, held, domain_of)
        g_dom = routed(router, domain_rows, domain_of)
        g_rep = routed(router, report, domain_of)
        fa_a = [float(by_id[r["id"]] != "base") for r in held]
        fa_b = [float(g != "base") for g in g_held]
        acc_a = [float(by_id[r["id"]] == r["domain"]) for r in domain_rows]
        acc_b = [float(g == r["domain"]) for g, r in zip(g_dom, domain_rows)]
        rh_a, rf_a = figures(base_rep, report)
        rh_b, rf_b = figures(g_rep, report)
        row = {"n": len(held), "none_examples_added": len(pool),
               "false_activation": {"plain": bootstrap_ci(fa_a), "with": bootstrap_ci(fa_b),
                                    "diff": paired_diff_ci(fa_b, fa_a)},
               "external_accuracy": {"plain": bootstrap_ci(acc_a), "with": bootstrap_ci(acc_b),
                                     "diff": paired_diff_ci(acc_b, acc_a)},
               "report_accuracy_diff": paired_diff_ci(rh_b, rh_a),
               "report_false_activation_diff": paired_diff_ci(rf_b, rf_a),
               "threshold": router.classifiers["knowledge"].threshold}
        result["sources"][s] = row
        fa, acc = row["false_activation"], row["external_accuracy"]
        print(f"{s:<14} n {len(held):>3}  false activation {pct(fa['plain'])} -> {pct(fa['with'])}  ({pts(fa['diff'])})  "
              f"external accuracy {pts(acc['diff'])}  report half accuracy {pts(row['report_accuracy_diff'])}, "
              f"false activation {pts(row['report_false_activation_diff'])}", flush=True)
    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
