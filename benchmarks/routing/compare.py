"""Two routers on the same prompts, paired: router B − router A, accuracy and false activation.

    .venv/bin/python benchmarks/routing/compare.py A.json B.json --prompts benchmarks/routing/prompts.jsonl \
        --external runs/routing/users.jsonl

A.json and B.json are `loralab route --eval --prompts ... [--external ...]` reports of two routers
(e.g. without and with `none_samples` in the registry's router.json). Each prompt's route is read
from both reports, and every difference is the mean of per-prompt differences on the prompts both
routed, with its paired bootstrap interval (`loralab.evaluate.routing.paired_difference`); the
discordant counts say how many prompts only A or only B got right (kept at the base, for general
prompts). The routes compared are each router's own decisions (`as_built`: its own threshold), not
a threshold chosen afterwards on a tune split. Two reports of different prompt files, splits or
seeds, or a prompt file whose ids are not the report's, are refused.
"""

from __future__ import annotations

import argparse
import json
import sys

from loralab.evaluate.routing import paired_difference, read_prompts


def _routes(report: dict, key: str, path: str) -> tuple[dict, dict]:
    part = report.get(key)
    if part is None or "routes" not in part.get("as_built", {}):
        sys.exit(f"{path}: no per-prompt routes under {key!r} (a report of `route --eval --prompts` from this version)")
    return part, part["as_built"]["routes"]


def _pts(c: dict) -> str:
    return f"{100 * c['mean']:+.1f} [{100 * c['lo']:+.1f}, {100 * c['hi']:+.1f}] points"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("a")
    ap.add_argument("b")
    ap.add_argument("--prompts", required=True, help="the file both reports' --prompts read")
    ap.add_argument("--external", help="the file both reports' --external read")
    ap.add_argument("--out", help="write the differences as JSON here")
    args = ap.parse_args()
    ra, rb = (json.load(open(p, encoding="utf-8")) for p in (args.a, args.b))
    result = {}
    for key, path in (("written", args.prompts), ("external", args.external)):
        if path is None:
            continue
        pa, a = _routes(ra, key, args.a)
        pb, b = _routes(rb, key, args.b)
        for k in ("file", "n_prompts", "n_report", "seed", "tune_share"):
            if pa.get(k) != pb.get(k):
                sys.exit(f"the two reports differ in {key} {k}: {pa.get(k)!r} vs {pb.get(k)!r}")
        rows = read_prompts(path)
        ids = {r["id"] for r in rows}
        for name, routes, part in ((args.a, a, pa), (args.b, b, pb)):
            found = len(ids & set(routes))
            if found != part["n_report"] or len(routes) != part["n_report"]:
                sys.exit(f"{name}: {found} of its {part['n_report']} routed {key} prompts are in {path}: "
                         "another prompt file than the report's")
        d = paired_difference(rows, a, b, seed=pa.get("seed", 0))
        d["wrong_domain_confident"] = {"a": len(pa["as_built"]["wrong_domain_confident"]),
                                       "b": len(pb["as_built"]["wrong_domain_confident"])}
        result[key] = d
        print(f"{key} ({path}): B - A")
        for name in ("accuracy", "false_activation"):
            c = d[name]
            print(f"  {name:<17} {_pts(c)}  n {c['n']}  only A {c['only_a']}, only B {c['only_b']}  p {c['p']:.3g}")
        w = d["wrong_domain_confident"]
        print(f"  wrong domain at >= 0.9: A {w['a']}, B {w['b']}")
    if args.out:
        from loralab.io import write_json

        write_json(args.out, {"a": args.a, "b": args.b, **result})


if __name__ == "__main__":
    main()
