"""Run the findings study one (domain, seed) part at a time and rewrite FINDINGS.md after each.

    .venv/bin/python scripts/findings_parts.py                          # every part, sport first
    .venv/bin/python scripts/findings_parts.py --domain sport --seeds 0 1 2
    .venv/bin/python scripts/findings_parts.py --findings-only          # FINDINGS.md from what is done

`loralab study SPEC` trains every pending run before it evaluates any, so a session that stops
half-way keeps trained adapters but no measured run. Here each part (one domain, one seed: ten
runs) is trained and evaluated before the next starts, so a stopped session keeps whole seeds and
FINDINGS.md always reflects every finished one. Finished runs are skipped (resumable).

Run folders live under --out (not in the repository); what FINDINGS.md needs of a finished run
(config.json, status.json, data.json, metrics.json with its per-item arrays, the training log:
about 60 KB, no weights) is kept in --keep (findings/runs/, committed) after every part and put
back into --out at the start, so a later session on a fresh checkout resumes the study where the
last one stopped instead of re-running finished seeds.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from loralab.study import runner
from loralab.study.findings import write
from loralab.study.spec import expand, load_spec


KEPT = ("config.json", "status.json", "data.json", "metrics.json", "train/train_log.jsonl")


def keep(root: Path, store: Path) -> int:
    """Copy the small files of every finished run of `root` into `store`; returns how many runs."""
    from loralab.study.runner import status_of

    n = 0
    for d in sorted((root / "runs").glob("*")):
        if status_of(d).get("state") != "done" or not (d / "metrics.json").exists():
            continue
        for name in KEPT:
            if (d / name).exists():
                (store / d.name / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d / name, store / d.name / name)
        n += 1
    return n


def restore(store: Path, root: Path) -> int:
    """Put kept runs back into `root` where it has no finished run of that id; returns how many."""
    from loralab.study.runner import status_of

    n = 0
    plan = store.parent / "study.json"  # the expanded run list (how many runs the study has)
    if plan.exists() and not (root / "study.json").exists():
        root.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(plan, root / "study.json")
    for d in sorted(store.glob("*")) if store.is_dir() else []:
        dest = root / "runs" / d.name
        if status_of(dest).get("state") == "done" and (dest / "metrics.json").exists():
            continue
        for name in KEPT:
            if (d / name).exists():
                (dest / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(d / name, dest / name)
        n += 1
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", default="studies/findings.yaml")
    ap.add_argument("--out", default="runs", help="Study output root (the study lands in OUT/<name>).")
    ap.add_argument("--findings", default="FINDINGS.md", help="Markdown file rewritten after each part.")
    ap.add_argument("--domain", nargs="*", help="Domains in order (default: the spec's domain axis).")
    ap.add_argument("--seeds", nargs="*", type=int, help="Seeds in order (default: the spec's).")
    ap.add_argument("--findings-only", action="store_true", help="Write FINDINGS.md from the finished runs only.")
    ap.add_argument("--keep", default="findings/runs", help="Where finished runs' small files are kept between "
                    "sessions (restored at the start, updated after every part).")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    root = runner.study_dir(spec, args.out)
    dump = spec.model_dump(mode="json")
    store = Path(args.keep)
    print(f"restored {restore(store, root)} finished runs from {store}", flush=True)
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
                keep(root, store)
    write(root, dump, Path(args.findings))
    print(f"findings: {Path(args.findings).resolve()}; {keep(root, store)} finished runs kept in {store}")


if __name__ == "__main__":
    main()
