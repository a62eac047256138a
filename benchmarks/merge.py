"""loralab merge vs PEFT's `add_weighted_adapter`: time, peak memory and the merged deltas.

    .venv/bin/python benchmarks/merge.py                 # N = 2 and 4 adapters, every shared method
    .venv/bin/python benchmarks/merge.py --n 2 --methods cat svd

Parents: N LoRA adapters on SmolLM2-135M-Instruct (rank 8, all linear layers, 210 modules),
made by PEFT with seeded random factors (B is zero at PEFT's init, so it is drawn too):
time and memory do not depend on training, and equality is checked on the exact deltas.

Each side runs in its own fresh process (so its peak RSS is its own), fp32 on the CPU,
with the same number of threads (`--threads`, default 1):
- loralab: `loralab.merge.merge(MergeConfig(...))`, reading the adapter folders and
  writing the merged folder; it never loads the base model.
- PEFT: load the base model and the N adapters (`PeftModel.from_pretrained`, `load_adapter`),
  `add_weighted_adapter`, `save_pretrained` of the new adapter. Its time is given in full
  and for `add_weighted_adapter` alone.

Pairs (loralab method -> PEFT combination_type), weights 1 each:
  linear    -> linear     PEFT's `linear` mixes A's and B's separately, which is not the sum of
                          the deltas: the printed error against the exact sum shows by how much
  cat       -> cat        both exact: must agree
  svd       -> svd        same rank (8): must agree (the truncated product is unique)
  ties      -> ties_svd   density 0.5, rank Σr: must agree (PEFT's plain `ties` works on A and B)
  magnitude -> magnitude_prune_svd   density 0.5, rank Σr: must agree
  dare_linear, dare_ties -> dare_linear_svd, dare_ties_svd   drop 0.5, rank Σr: random masks
                          from different generators, so only time and memory compare

Printed per (N, method): seconds and peak RSS of each side, the time ratio, and the
relative Frobenius difference of every side's merged deltas from the exact merge
(loralab's delta function on the parents' exact deltas, before any truncation) and
from each other.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

PAIRS = {"linear": "linear", "cat": "cat", "svd": "svd", "ties": "ties_svd", "magnitude": "magnitude_prune_svd",
         "dare_linear": "dare_linear_svd", "dare_ties": "dare_ties_svd"}
AGREE = {"cat", "svd", "ties", "magnitude"}
DENSITY = 0.5
RANK = 8


def make_parents(root: Path, n: int) -> list[str]:
    """N rank-8 all-linear adapters on SmolLM2 with seeded random A and B (made once, cached in root)."""
    from peft import LoraConfig, get_peft_model

    from loralab import models
    from loralab.adapters import save_adapter

    out = [root / f"parent{i}" for i in range(n)]
    todo = [i for i, p in enumerate(out) if not (p / "adapter_model.safetensors").exists()]
    if todo:
        loaded = models.load("smollm2-135m", device="cpu", dtype="float32")
        for i in todo:
            m = get_peft_model(loaded.model, LoraConfig(r=RANK, lora_alpha=16, target_modules="all-linear"))
            g = torch.Generator().manual_seed(i)
            with torch.no_grad():
                for name, p in m.named_parameters():
                    if "lora_" in name:
                        p.copy_(torch.randn(p.shape, generator=g) * (0.02 if "lora_B" in name else 0.05))
            save_adapter(m, out[i], card={"kind": "adapter", "domain": f"parent{i}", "base": {
                "spec": loaded.spec, "fingerprint": loaded.fingerprint, "path": loaded.path}})
            loaded.model = m.unload()
    return [str(p) for p in out]


# ------------------------------------------------------------------ the two sides (child processes)

def run_loralab(parents: list[str], method: str, out: str) -> dict:
    from loralab.merge import MergeConfig, merge

    kw = {"drop": 1 - DENSITY} if method.startswith("dare") else {"density": DENSITY} if method in ("ties", "magnitude") else {}
    if method == "svd":
        kw["rank"] = RANK
    t = time.perf_counter()
    merge(MergeConfig(parents=parents, method=method, weights=[1.0] * len(parents), out=out, overwrite=True, **kw))
    return {"seconds": time.perf_counter() - t}


def run_peft(parents: list[str], method: str, out: str) -> dict:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from loralab import models

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(models.resolve_path("smollm2-135m"), dtype=torch.float32)
    pm = PeftModel.from_pretrained(model, parents[0], adapter_name="p0")
    for i, p in enumerate(parents[1:], 1):
        pm.load_adapter(p, adapter_name=f"p{i}")
    t1 = time.perf_counter()
    kw = {} if method in ("linear", "cat") else {"svd_rank": RANK if method == "svd" else RANK * len(parents)}
    if method not in ("linear", "cat", "svd"):
        kw["density"] = DENSITY
    pm.add_weighted_adapter([f"p{i}" for i in range(len(parents))], [1.0] * len(parents), "merged",
                            combination_type=PAIRS[method], **kw)
    t2 = time.perf_counter()
    pm.save_pretrained(out, selected_adapters=["merged"])
    return {"seconds": time.perf_counter() - t0, "merge_seconds": t2 - t1, "load_seconds": t1 - t0}


def peak_rss_mib() -> float:
    """This process's own peak RSS (VmHWM; ru_maxrss would include the parent's from before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(side: str, parents: list[str], method: str, out: str) -> None:
    res = (run_loralab if side == "loralab" else run_peft)(parents, method, out)
    res["peak_rss_mib"] = peak_rss_mib()
    print(json.dumps(res))


def spawn(side: str, parents: list[str], method: str, out: str, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--method", method, "--out", out, "--parents", *parents]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if res.returncode:
        raise SystemExit(f"{side} {method} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ comparison

def deltas(folder: str) -> dict[str, torch.Tensor]:
    from loralab.merge.folders import read_adapter

    return {n: f.delta() for n, f in read_adapter(folder).modules.items()}


def exact(parents: list[str], method: str) -> dict[str, torch.Tensor]:
    """The untruncated merge of the parents' exact deltas (loralab's delta function)."""
    from loralab.merge import methods as M

    ps = [deltas(p) for p in parents]
    p = M.Params(density=DENSITY)
    return {n: M.merge_deltas("linear" if method == "cat" else method, [d[n] for d in ps], [1.0] * len(ps), p, name=n)
            for n in ps[0]}


def rel(x: dict, y: dict) -> float:
    num = sum(float((x[k] - y[k]).double().norm()) ** 2 for k in y)
    den = sum(float(y[k].double().norm()) ** 2 for k in y)
    return (num / den) ** 0.5


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--methods", nargs="+", default=list(PAIRS))
    ap.add_argument("--threads", type=int, default=1, help="Threads of each side (1: steady on a shared machine, "
                    "where OpenMP threads of small LAPACK calls otherwise spin against other processes).")
    ap.add_argument("--work", default=None, help="Folder for parents and outputs (default: a temp folder).")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--method", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--parents", nargs="*", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child, a.parents, a.method, a.out)
    work = Path(a.work or tempfile.mkdtemp(prefix="merge-bench-"))
    parents = make_parents(work / "parents", max(a.n))
    print(f"SmolLM2-135M-Instruct, rank-{RANK} all-linear adapters, fp32 CPU, {a.threads} thread(s) per side")
    head = (f"{'N':>2} {'method':<12} {'loralab s':>9} {'PEFT s':>7} {'(merge)':>8} {'ratio':>6} "
            f"{'RSS MiB':>8} {'PEFT RSS':>8} {'err loralab':>11} {'err PEFT':>9} {'l vs P':>8}")
    print(head)
    rows = []
    for n in a.n:
        ps = parents[:n]
        for m in a.methods:
            lo, pe = str(work / f"out-{n}-{m}-loralab"), str(work / f"out-{n}-{m}-peft")
            r_l, r_p = spawn("loralab", ps, m, lo, a.threads), spawn("peft", ps, m, pe, a.threads)
            ref = exact(ps, m) if not m.startswith("dare") else None
            dl, dp = deltas(lo), deltas(str(Path(pe) / "merged"))
            e_l = rel(dl, ref) if ref is not None else float("nan")
            e_p = rel(dp, ref) if ref is not None else float("nan")
            if m == "svd":  # both truncate: compare the truncation errors and each other
                e_l, e_p = rel(dl, exact(ps, "linear")), rel(dp, exact(ps, "linear"))
            row = {"n": n, "method": m, "peft": PAIRS[m], "loralab": r_l, "peft_run": r_p,
                   "err_loralab": e_l, "err_peft": e_p, "loralab_vs_peft": rel(dl, dp),
                   "ratio": r_p["seconds"] / r_l["seconds"]}
            rows.append(row)
            print(f"{n:>2} {m:<12} {r_l['seconds']:>9.2f} {r_p['seconds']:>7.2f} {r_p['merge_seconds']:>8.2f} "
                  f"{row['ratio']:>5.2f}x {r_l['peak_rss_mib']:>8.0f} {r_p['peak_rss_mib']:>8.0f} "
                  f"{e_l:>11.2e} {e_p:>9.2e} {row['loralab_vs_peft']:>8.2e}", flush=True)
    (work / "results.json").write_text(json.dumps(rows, indent=2))
    bad = [r for r in rows if r["method"] in AGREE and r["loralab_vs_peft"] > 1e-4]
    print(f"results in {work / 'results.json'}; methods that should agree: "
          + ("all agree to 1e-4" if not bad else f"DISAGREE: {[(r['n'], r['method']) for r in bad]}"))


if __name__ == "__main__":
    main()
