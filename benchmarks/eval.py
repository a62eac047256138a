"""Evaluation speed and agreement: loralab vs lm-evaluation-harness on the same items.

    .venv/bin/pip install -e ".[bench]"                 # lm-eval
    .venv/bin/python benchmarks/eval.py                  # ARC-E, ARC-C, PIQA, HellaSwag: first 200 items each
    .venv/bin/python benchmarks/eval.py --limit 0        # every item (HellaSwag: first 1,000)
    .venv/bin/python benchmarks/eval.py --quick-suite runs/med/adapter   # wall time of the quick suite

Both sides score zero-shot ARC-Easy and ARC-Challenge (validation), PIQA (validation)
and HellaSwag (validation) on the embedded SmolLM2-135M with the same prompts and items:
lm-eval reads loralab's exported task YAMLs (`--include_path`, the packaged Arrow files,
offline; `--limit N` = the first N items, loralab takes the same first N).

Sides, in alternating order:
  loralab exact      fp32, `MCTask.evaluate` (every choice of every item in one engine call,
                     each item's context computed once for all its choices)
  lm-eval, batch 1   `--model hf ... dtype=float32`, its default batch size (as a user runs it)
  loralab fast       the frozen-weight format the device policy measured fastest here
  lm-eval, best      the same at `--lm-eval-best` (default 16: batched, as an expert runs it
                     on a CPU; `auto` makes lm-eval probe from 64 down, which did not finish
                     within 10 minutes on a shared 2-core machine)
Each side is timed from model load to results (lm-eval: its own total_evaluation_time).
Printed per task: acc / acc_norm of lm-eval (batch 1), loralab exact and loralab fast;
the exact sides must agree; the fast mode is offered for a task only when both its
accuracies are within 0.5 points of exact.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import peak_rss_mib

TASKS = ["arc_easy", "arc_challenge", "piqa", "hellaswag"]

FIRST_N = '''

def hellaswag_docs_first(dataset):
    return hellaswag_docs(dataset.select(range(min({n}, len(dataset)))))
'''


def export_tasks(folder: Path, names: list[str], hellaswag_n: int) -> None:
    """loralab's lm-eval YAMLs; HellaSwag restricted to its first `hellaswag_n` items."""
    from loralab.evaluate.lmeval import export

    export(folder, names)
    if "hellaswag" in names:
        p = folder / "loralab_hellaswag.yaml"
        p.write_text(p.read_text().replace("loralab_utils.hellaswag_docs", "loralab_utils.hellaswag_docs_first"))
        with open(folder / "loralab_utils.py", "a") as f:
            f.write(FIRST_N.format(n=hellaswag_n))


def run_lmeval(model_dir: str, names: list[str], folder: Path, batch_size: str, limit: int) -> tuple[dict, float, str]:
    """(per-task {acc, acc_norm}, lm-eval's own evaluation seconds, the batch size(s) it used)."""
    out = folder / f"out-{batch_size}"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--include_path", str(folder),
           "--tasks", ",".join(f"loralab_{n}" for n in names), "--device", "cpu" if not torch.cuda.is_available()
           else "cuda", "--batch_size", batch_size, "--output_path", str(out)]
    if limit:
        cmd += ["--limit", str(limit)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    res = json.loads(Path(sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]).read_text())
    scores = {n: {"acc": res["results"][f"loralab_{n}"]["acc,none"],
                  "acc_norm": res["results"][f"loralab_{n}"].get("acc_norm,none")} for n in names}
    used = res.get("config", {}).get("batch_sizes") or batch_size
    return scores, float(res.get("total_evaluation_time_seconds", wall)), str(used)


def run_loralab(names: list[str], limit: int, hellaswag_n: int, dtype: str) -> tuple[dict, float, dict]:
    from loralab import models
    from loralab.evaluate import tasks as T

    t0 = time.perf_counter()
    loaded = models.load("smollm2-135m", dtype=dtype)
    scores, counts = {}, {}
    for n in names:
        task = T.get(n)
        items = task.all_items()
        items = items[:limit] if limit else items[:hellaswag_n] if n == "hellaswag" else items
        r = task.evaluate(loaded, items, progress=False)
        scores[n] = {"acc": float(r.acc.mean()), "acc_norm": float(r.acc_norm.mean()) if r.acc_norm is not None
                     else None}
        counts[n] = len(items)
    return scores, time.perf_counter() - t0, counts


def quick_suite(model: str, adapter: str) -> None:
    from loralab.evaluate import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = evaluate(EvalConfig(model=model, adapters=[adapter], suite="quick", out=out))
        wall = time.perf_counter() - t0
    m = next(iter(res["adapters"].values()))
    print(f"quick suite, base + 1 adapter: {wall:.0f} s wall; base pass {m['seconds_base']:.0f} s, "
          f"adapter {m['seconds_adapter']:.0f} s: {m['timing']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default=",".join(TASKS))
    ap.add_argument("--limit", type=int, default=200, help="first N items of every task (0: all)")
    ap.add_argument("--hellaswag", type=int, default=1000, help="with --limit 0: first N HellaSwag items")
    ap.add_argument("--lm-eval-best", default="16", help="lm-eval's tuned --batch_size (a number, or auto)")
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument("--quick-suite", metavar="ADAPTER", help="only time the quick suite on base + ADAPTER")
    a = ap.parse_args()
    if a.quick_suite:
        quick_suite("smollm2-135m", a.quick_suite)
        return
    from loralab import device, models

    from _common import machine_line

    prof = device.profile(device.resolve_device("auto"))
    fast = prof.choose("frozen")
    print(machine_line(prof))
    names = [n for n in a.tasks.split(",") if n]
    sides: dict[str, tuple] = {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not a.skip_lm_eval:
            export_tasks(folder, names, a.hellaswag)
        limit = a.limit if a.limit or "hellaswag" not in names else 0
        model_dir = models.load("smollm2-135m").path
        plan = [("loralab exact", lambda: run_loralab(names, a.limit, a.hellaswag, "float32"))]
        if not a.skip_lm_eval:
            plan.append(("lm-eval, batch 1", lambda: run_lmeval(model_dir, names, folder, "1", limit)))
        plan.append((f"loralab fast ({fast})", lambda: run_loralab(names, a.limit, a.hellaswag, fast)))
        if not a.skip_lm_eval:
            plan.append(("lm-eval, best", lambda: run_lmeval(model_dir, names, folder, a.lm_eval_best, limit)))
        for name, fn in plan:
            sides[name] = fn()
            print(f"{name}: {sides[name][1]:.0f} s", flush=True)
    counts = sides["loralab exact"][2]
    print(f"items {counts}; peak RSS {peak_rss_mib():.0f} MiB\n")
    cols = [k for k in sides]
    print(f"{'task':14s}{'items':>6s}" + "".join(f"{k[:22]:>24s}" for k in cols) + "   fast offered")
    ex, fa = sides["loralab exact"][0], sides[f"loralab fast ({fast})"][0]
    worst_exact = 0.0
    for n in names:
        cells = []
        for k in cols:
            sc = sides[k][0][n]
            cells.append(f"{sc['acc']:.4f}/{(sc['acc_norm'] if sc['acc_norm'] is not None else float('nan')):.4f}")
        d = max(abs(fa[n]["acc"] - ex[n]["acc"]), abs((fa[n]["acc_norm"] or 0) - (ex[n]["acc_norm"] or 0))) * 100
        if "lm-eval, batch 1" in sides:
            t = sides["lm-eval, batch 1"][0][n]
            worst_exact = max(worst_exact, 100 * abs(t["acc"] - ex[n]["acc"]),
                              100 * abs((t["acc_norm"] or 0) - (ex[n]["acc_norm"] or 0)))
        print(f"{n:14s}{counts[n]:6d}" + "".join(f"{c:>24s}" for c in cells)
              + f"   {'yes' if d <= 0.5 else 'no'} (Δ {d:.2f} pts)")
    print("(acc/acc_norm per side)")
    if "lm-eval, batch 1" in sides:
        print(f"\nexact sides agree to {worst_exact:.2f} points (lm-eval batch 1 vs loralab exact)")
        for mine in ("loralab exact", f"loralab fast ({fast})"):
            t = sides[mine][1]
            print(f"{mine:22s} {t:6.0f} s: {sides['lm-eval, batch 1'][1] / t:5.2f}x lm-eval batch 1 "
                  f"({sides['lm-eval, batch 1'][1]:.0f} s, goal >= 4x), {sides['lm-eval, best'][1] / t:5.2f}x lm-eval "
                  f"best (batch {sides['lm-eval, best'][2]}, {sides['lm-eval, best'][1]:.0f} s, goal >= 3x)")
    print(machine_line(prof))


if __name__ == "__main__":
    main()
