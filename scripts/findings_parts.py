"""Run the findings study one (domain, seed) part at a time and rewrite FINDINGS.md after each.

    .venv/bin/python scripts/findings_parts.py                          # every part, sport first
    .venv/bin/python scripts/findings_parts.py --domain sport --seeds 0 1 2
    .venv/bin/python scripts/findings_parts.py --findings-only          # FINDINGS.md from what is done

`loralab study SPEC` trains every pending run before it evaluates any, so a session that stops
half-way keeps trained adapters but no measured run. Here each part (one domain, one seed: ten
runs) is trained and evaluated before the next starts, so a stopped session keeps whole seeds and
FINDINGS.md always reflects every finished one. Finished runs are skipped (resumable).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from loralab.study import runner
from loralab.study.findings import write
from loralab.study.spec import expand, load_spec


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="studies/findings.yaml")
    ap.add_argument("--out", default="runs", help="Study output root (the study lands in OUT/<name>).")
    ap.add_argument("--findings", default="FINDINGS.md", help="Markdown file rewritten after each part.")
    ap.add_argument("--domain", nargs="*", help="Domains in order (default: the spec's domain axis).")
    ap.add_argument("--seeds", nargs="*", type=int, help="Seeds in order (default: the spec's).")
    ap.add_argument("--findings-only", action="store_true", help="Write FINDINGS.md from the finished runs only.")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    root = runner.study_dir(spec, args.out)
    dump = spec.model_dump(mode="json")
    if not args.findings_only:
        runs = expand(spec)
        domains = args.domain or list(spec.axes.get("domain") or [None])
        for dom in domains:
            for seed in args.seeds if args.seeds is not None else spec.seeds:
                ids = [r.id for r in runs if r.config.seed == seed and r.labels.get("domain", dom) == dom]
                t0 = time.time()
                states = runner.run_study(spec, args.out, only=ids, progress=False,
                                          on_event=lambda kind, run, st: print(f"{run.id} {run.name}: {kind}",
                                                                                flush=True))
                print(f"part domain={dom} seed={seed}: {runner.summary_line(states)} in {time.time() - t0:.0f} s",
                      flush=True)
                write(root, dump, Path(args.findings))
    write(root, dump, Path(args.findings))
    print(f"findings: {Path(args.findings).resolve()}")


if __name__ == "__main__":
    main()
