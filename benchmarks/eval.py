"""Evaluation speed: the quick suite's wall time, and the batched engine vs a per-item loop.

    python benchmarks/eval.py --adapter runs/med/adapter      # quick suite, base + 1 adapter
    python benchmarks/eval.py --items 40 --skip-suite          # ARC-Easy: loralab vs naive loop

1. Runs `loralab.evaluate.evaluate` with the quick suite on the embedded model and one
   adapter, and prints the wall time split into base / adapter / contamination / ΔW.
2. Scores the same ARC-Easy items (i) with `MCTask.evaluate` (all choices of all items
   in one length-sorted, batched `token_logprobs` call) and (ii) with a naive loop that
   runs one full forward per (item, choice) and log-softmaxes the whole (T, V) logits,
   as a plain reimplementation of lm-eval's loglikelihood would; prints items/s of each,
   the ratio, and checks both give the same predictions.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import torch


def naive_arc(loaded, items) -> list[np.ndarray]:
    """One forward per (item, choice); full (T, V) fp32 log-softmax each time."""
    from loralab.logprobs import encode_pair

    out = []
    with torch.inference_mode():
        for it in items:
            lls = []
            for ctx, cont in it.pairs():
                c, x = encode_pair(loaded.tokenizer, ctx, cont, bos=False)
                ids = torch.tensor([c + x], device=loaded.device)
                lsm = loaded.model(input_ids=ids).logits[0].float().log_softmax(-1)  # (T, V)
                pos = torch.arange(len(c) - 1, len(c) + len(x) - 1)
                lls.append(float(lsm[pos, torch.tensor(x)].sum()))
            out.append(np.array(lls))
    return out


def engine_vs_naive(model: str, n: int) -> None:
    from loralab import models
    from loralab.evaluate import tasks as T

    loaded = models.load(model)
    task = T.get("arc_easy")
    items = task.items(n, seed=0)
    t0 = time.perf_counter()
    res = task.evaluate(loaded, items, progress=False)
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = naive_arc(loaded, items)
    t_naive = time.perf_counter() - t0
    same = sum(int(np.argmax(a) == np.argmax(b)) for a, b in zip(res.loglik, ref))
    print(f"ARC-Easy {n} items ({sum(len(i.choices) for i in items)} choices), {loaded.model.dtype}")
    print(f"  loralab batched : {t_engine:7.1f} s  {n / t_engine:6.2f} items/s")
    print(f"  naive per item  : {t_naive:7.1f} s  {n / t_naive:6.2f} items/s")
    print(f"  speed-up {t_naive / t_engine:.2f}x; same prediction on {same}/{n} items "
          f"(bf16 batching can flip near-ties)")


def quick_suite(model: str, adapter: str) -> None:
    from loralab.evaluate import EvalConfig, evaluate

    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = evaluate(EvalConfig(model=model, adapters=[adapter], suite="quick", out=out))
        wall = time.perf_counter() - t0
    m = next(iter(res["adapters"].values()))
    print(f"quick suite, base + 1 adapter: {wall:.0f} s wall")
    print(f"  base pass {m['seconds_base']:.0f} s (benchmarks {m['timing']['base']['tasks']} s, generation "
          f"{m['timing']['base']['generation']} s, rest: load, base answers, in-domain loss)")
    print(f"  adapter {m['seconds_adapter']:.0f} s: {m['timing']}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapter", help="adapter folder for the quick-suite timing")
    ap.add_argument("--items", type=int, default=40, help="ARC-Easy items for engine vs naive")
    ap.add_argument("--skip-suite", action="store_true")
    ap.add_argument("--skip-naive", action="store_true")
    a = ap.parse_args()
    if not a.skip_suite:
        if not a.adapter:
            raise SystemExit("--adapter is needed for the quick-suite timing (or pass --skip-suite)")
        quick_suite(a.model, a.adapter)
    if not a.skip_naive:
        engine_vs_naive(a.model, a.items)


if __name__ == "__main__":
    main()
