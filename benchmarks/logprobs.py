"""Token log-prob engine vs the naive one-example-at-a-time loop, on SmolLM2-135M.

    .venv/bin/python benchmarks/logprobs.py            # 64 LAMBADA passages
    .venv/bin/python benchmarks/logprobs.py --n 128

Both sides score the same (context, continuation) pairs. The naive loop is what
most scripts do: one forward per example, full (T, V) logits, log-softmax, gather.
Printed: agreement (fp32 engine vs fp32 naive), tokens/s of the naive fp32 loop,
the engine in fp32 and in the default dtype, the ratio, and the engine's
model-FLOPs utilisation against this machine's measured matmul throughput (the faster
of fp32 and bf16).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from _common import forward_flops_per_token, lambada_pairs, peak_matmul_flops, peak_rss_mib
from loralab import logprobs as L
from loralab import models


def naive(model, enc):
    out = []
    with torch.inference_mode():
        for ctx, cont in enc:
            ids = torch.tensor([ctx + cont])
            lsm = model(ids).logits[0].float().log_softmax(-1)
            pos = torch.arange(len(ctx) - 1, len(ctx) + len(cont) - 1)
            out.append(lsm[pos, torch.tensor(cont)].numpy())
    return out


def timed(fn):
    t = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64)
    args = ap.parse_args()
    pairs = lambada_pairs(args.n)
    f32 = models.load("smollm2-135m", device="cpu", dtype="float32")
    enc = [L.encode_pair(f32.tokenizer, c, x, bos=True) for c, x in pairs]
    tokens = sum(len(c) + len(x) - 1 for c, x in enc)  # forwarded positions
    ctx_avg = tokens / len(enc)

    ref, t_naive = timed(lambda: naive(f32.model, enc))
    eng32, t_e32 = timed(lambda: L.token_logprobs(f32.model, enc, pad_id=f32.tokenizer.pad_token_id))
    diff = max(float(np.abs(a - b.logprobs).max()) for a, b in zip(ref, eng32))
    del f32
    auto = models.load("smollm2-135m")
    L.token_logprobs(auto.model, enc[:4])  # warm-up
    eng, t_auto = timed(lambda: L.token_logprobs(auto.model, enc, pad_id=auto.tokenizer.pad_token_id))
    diff_auto = max(float(np.abs(a - b.logprobs).max()) for a, b in zip(ref, eng))
    mean_auto = float(np.mean([abs(a.mean() - b.mean) for a, b in zip(ref, eng)]))

    peak, peak_dt = peak_matmul_flops()
    flops = forward_flops_per_token(auto.model.config, ctx_avg) * tokens
    scored = sum(len(x) for _, x in enc)
    flops += 2 * auto.model.config.hidden_size * auto.model.config.vocab_size * scored  # head on scored rows
    dt = str(next(auto.model.parameters()).dtype).removeprefix("torch.")
    print(f"pairs {len(enc)}, forwarded tokens {tokens}, scored tokens {scored}")
    print(f"max |Δ logprob| engine fp32 vs naive fp32: {diff:.2e}")
    print(f"max |Δ logprob| engine {dt} vs naive fp32: {diff_auto:.2e} (mean |Δ per-pair mean| {mean_auto:.2e})")
    print(f"{'path':<28}{'seconds':>9}{'tokens/s':>11}{'ratio':>8}")
    for name, t in [("naive loop (fp32)", t_naive), ("engine (fp32)", t_e32), (f"engine ({dt}, default)", t_auto)]:
        print(f"{name:<28}{t:>9.2f}{tokens / t:>11.0f}{t_naive / t:>7.1f}x")
    print(f"matmul peak {peak / 1e12:.3f} TFLOP/s ({peak_dt}, the faster here); engine ({dt}) MFU {flops / t_auto / peak:.1%}")
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


if __name__ == "__main__":
    main()
