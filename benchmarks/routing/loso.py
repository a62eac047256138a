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

Each figure is paired with the plain router's on the same prompts (B − A, paired bootstrap:
`loralab.evaluate.routing.paired_difference`).
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
from loralab.evaluate.routing import paired_difference, read_prompts, tune_examples, tune_split
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


def routed(router, rows, domain_of) -> dict[str, str]:
    """{id: routed domain, or "base"} of each row."""
    out = {}
    for r, d in zip(rows, router.route_many([r["text"] for r in rows])):
        out[r["id"]] = domain_of.get(d.adapters[0][0], d.adapters[0][0]) if d.adapters else "base"
    return out


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
    base = {**routed(plain, ext, domain_of), **routed(plain, report, domain_of)}
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
        got = {k: v for rows in (held, domain_rows, report) for k, v in routed(router, rows, domain_of).items()}
        row = {"n": len(held), "none_examples_added": len(pool),
               "false_activation": paired_difference(held, base, got)["false_activation"],
               "external_accuracy": paired_difference(domain_rows, base, got)["accuracy"],
               "report": paired_difference(report, base, got),
               "threshold": router.classifiers["knowledge"].threshold}
        result["sources"][s] = row
        fa, acc, rep = row["false_activation"], row["external_accuracy"], row["report"]
        print(f"{s:<14} n {len(held):>3}  false activation {pct(fa['a'])} -> {pct(fa['b'])}  ({pts(fa)})  "
              f"external accuracy {pts(acc)}  report half accuracy {pts(rep['accuracy'])}, "
              f"false activation {pts(rep['false_activation'])}", flush=True)
    write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    sys.exit(main())
