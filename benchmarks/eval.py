"""Evaluation speed and agreement: loralab vs lm-evaluation-harness on the same items.

    .venv/bin/pip install -e ".[bench]"                 # lm-eval
    .venv/bin/python benchmarks/eval.py                  # ARC-E, ARC-C, PIQA, 1,000 HellaSwag
    .venv/bin/python benchmarks/eval.py --hellaswag 200 --tasks arc_easy,hellaswag
    .venv/bin/python benchmarks/eval.py --quick-suite runs/med/adapter   # wall time of the quick suite

Both sides score zero-shot ARC-Easy and ARC-Challenge (validation), PIQA (validation)
and the first N HellaSwag validation items on the embedded SmolLM2-135M in fp32, with the
same prompts: lm-eval reads loralab's exported task YAMLs (`--include_path`, the packaged
Arrow files, offline) and runs with its defaults (`--model hf`, batch size 1).
loralab runs `MCTask.evaluate`: every choice of every item in one engine call, each
item's context computed once for all its choices (prefix-shared rows).

Printed per task: acc and acc_norm of both and their difference (goal: within 1 point),
then both wall times (model load to results) and the speed-up (goal >= 4x).
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


def run_lmeval(model_dir: str, names: list[str], folder: Path, batch_size: str) -> tuple[dict, float, float]:
    """(per-task {acc, acc_norm}, lm-eval's own evaluation seconds, process wall seconds)."""
    out = folder / "out"
    cmd = [sys.executable, "-m", "lm_eval", "--model", "hf",
           "--model_args", f"pretrained={model_dir},dtype=float32", "--include_path", str(folder),
           "--tasks", ",".join(f"loralab_{n}" for n in names), "--device", "cpu" if not torch.cuda.is_available()
           else "cuda", "--batch_size", batch_size, "--output_path", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    res = json.loads(Path(sorted(glob.glob(str(out / "**" / "results_*.json"), recursive=True))[-1]).read_text())
    scores = {n: {"acc": res["results"][f"loralab_{n}"]["acc,none"],
                  "acc_norm": res["results"][f"loralab_{n}"].get("acc_norm,none")} for n in names}
    return scores, float(res.get("total_evaluation_time_seconds", wall)), wall


def run_loralab(names: list[str], hellaswag_n: int) -> tuple[dict, float, dict]:
    from loralab import models
    from loralab.evaluate import tasks as T

    t0 = time.perf_counter()
    loaded = models.load("smollm2-135m", dtype="float32")
    scores, counts = {}, {}
    for n in names:
        task = T.get(n)
        items = task.all_items()[:hellaswag_n] if n == "hellaswag" else task.all_items()
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
    ap.add_argument("--hellaswag", type=int, default=1000, help="first N HellaSwag validation items")
    ap.add_argument("--lm-eval-batch-size", default="1", help="lm-eval's --batch_size (its default: 1)")
    ap.add_argument("--skip-lm-eval", action="store_true")
    ap.add_argument("--quick-suite", metavar="ADAPTER", help="only time the quick suite on base + ADAPTER")
    a = ap.parse_args()
    if a.quick_suite:
        quick_suite("smollm2-135m", a.quick_suite)
        return
    names = [n for n in a.tasks.split(",") if n]
    ours, t_ours, counts = run_loralab(names, a.hellaswag)
    print(f"loralab: {t_ours:.0f} s for {sum(counts.values())} items {counts}; peak RSS {peak_rss_mib():.0f} MiB; "
          f"threads {torch.get_num_threads()}")
    if a.skip_lm_eval:
        for n in names:
            print(f"  {n:14s} acc {ours[n]['acc']:.4f} acc_norm {ours[n]['acc_norm']}")
        return
    from loralab import models

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        export_tasks(folder, names, a.hellaswag)
        theirs, t_lm, wall_lm = run_lmeval(models.load("smollm2-135m").path, names, folder, a.lm_eval_batch_size)
    print(f"lm-eval (batch size {a.lm_eval_batch_size}): {t_lm:.0f} s evaluation ({wall_lm:.0f} s process wall)\n")
    print(f"{'task':14s}{'items':>7s}{'acc lm-eval':>13s}{'acc loralab':>13s}{'Δ pts':>7s}"
          f"{'norm lm-eval':>14s}{'norm loralab':>14s}{'Δ pts':>7s}")
    worst = 0.0
    for n in names:
        o, t = ours[n], theirs[n]
        d = 100 * (o["acc"] - t["acc"])
        dn = 100 * (o["acc_norm"] - t["acc_norm"]) if o["acc_norm"] is not None and t["acc_norm"] is not None else 0.0
        worst = max(worst, abs(d), abs(dn))
        print(f"{n:14s}{counts[n]:7d}{t['acc']:13.4f}{o['acc']:13.4f}{d:7.2f}"
              f"{(t['acc_norm'] or float('nan')):14.4f}{(o['acc_norm'] or float('nan')):14.4f}{dn:7.2f}")
    print(f"\nlargest accuracy difference {worst:.2f} points (goal <= 1); "
          f"speed-up {t_lm / t_ours:.2f}x (goal >= 4x): lm-eval {t_lm:.0f} s vs loralab {t_ours:.0f} s")


if __name__ == "__main__":
    main()
