"""This machine's matmul peak and the model-FLOPs utilisation of loralab's three hot paths.

    .venv/bin/python benchmarks/mfu.py

Peak: best of 10 square 2048 matmuls in fp32 and in bf16; the MFU denominator is the
faster of the two (on a CPU without AMX, fp32). Model FLOPs, SmolLM2-135M:
  forward, per decoder position   2 x non-embedding params + causal attention (QK^T, AV)
  vocabulary projection, per row  2 x hidden x vocab (only rows whose logits are needed)
  training, per position          2 x forward (frozen base: the backward pass computes
                                  input gradients only) + 2 x projection per labelled row
                                  (the fused loss forms logits and their gradient once)
Paths: scoring (IFD of 48 MedMCQA Q&A records), evaluation (200 ARC-Easy items, every
choice), training (LoRA r=8 all-linear, packed 8 x 256 rows of NFL passages, 3 timed
steps after one warm-up). Work counted is the work actually run (shared prefixes once).
"""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from _common import bf16_matmul_flops, forward_flops_per_token


def rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scoring(loaded, fpt, head) -> tuple[float, float]:
    from score import medmcqa

    from loralab.score import ScoreConfig, score_records

    recs = medmcqa(48)
    t0 = time.perf_counter()
    res = score_records(list(enumerate(recs, 1)), ScoreConfig(cache=False, progress=False), loaded)
    t = time.perf_counter() - t0
    n_resp = sum(r.meta["score"]["n_resp_tokens"] for r in res.records)
    return fpt * res.stats["computed_tokens"] + head * 2 * n_resp, t


def evaluation(loaded, fpt, head) -> tuple[float, float]:
    from loralab.evaluate import tasks as T
    from loralab.logprobs import encode_pair, token_logprobs

    items = T.get("arc_easy").all_items()[:200]
    enc = [encode_pair(loaded.tokenizer, c, x, bos=False) for it in items for c, x in it.pairs()]
    stats: dict = {}
    t0 = time.perf_counter()
    token_logprobs(loaded.model, enc, stats=stats)
    t = time.perf_counter() - t0
    return fpt * stats["computed_tokens"] + head * sum(len(x) for _, x in enc), t


def training(fpt, head) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model

    from loralab import models
    from loralab.data.ingest import IngestConfig, ingest
    from loralab.data.records import read_records
    from loralab.fastlora import fast_lora
    from loralab.losses import make_loss
    from loralab.packing import Batcher, encode_records

    loaded = models.load("smollm2-135m")
    with tempfile.TemporaryDirectory() as tmp:
        ingest(["olmo:drop-nfl"], tmp + "/nfl", IngestConfig(progress=False))
        recs = list(read_records(tmp + "/nfl"))
    exs, _ = encode_records(recs, loaded.tokenizer, max_seq_len=256)
    batcher = Batcher(exs, seed=0, packing=True, max_seq_len=256, batch_size=8, batch_tokens=None,
                      pad_id=loaded.tokenizer.pad_token_id or 0)
    model = loaded.model
    model.requires_grad_(False)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    model.train()
    loss_fn = make_loss(chunk=128)
    flops = secs = 0.0
    with fast_lora(model):
        for step in range(4):
            (batch,) = batcher.step(step, 1)
            t0 = time.perf_counter()
            loss, st = loss_fn(model, batch)
            loss.backward()
            dt = time.perf_counter() - t0
            if step:  # the first step warms up
                flops += 2 * fpt * batch["input_ids"].numel() + 2 * head * float(st["tokens"])
                secs += dt
    return flops, secs


def main() -> None:
    from loralab import models

    peaks = {dt: bf16_matmul_flops(dtype=getattr(torch, dt)) for dt in ("float32", "bfloat16")}
    best = max(peaks, key=peaks.get)
    print(f"matmul peak ({torch.get_num_threads()} threads): " +
          ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in peaks.items()) + f"; MFU against {best}")
    loaded = models.load("smollm2-135m")
    cfg = loaded.model.config
    head = 2 * cfg.hidden_size * cfg.vocab_size
    rows = []
    for name, fn, seq in (("scoring (IFD)", lambda f: scoring(loaded, f, head), 90),
                          ("evaluation (ARC-E)", lambda f: evaluation(loaded, f, head), 40),
                          ("training (LoRA)", lambda f: training(f, head), 128)):
        flops, secs = fn(forward_flops_per_token(cfg, seq))
        rows.append((name, flops, secs))
        print(f"{name:22s}{flops / 1e12:8.2f} TFLOP in {secs:6.1f} s = {flops / secs / 1e9:6.1f} GFLOP/s, "
              f"MFU {flops / secs / peaks[best]:6.1%}   (peak RSS so far {rss():.0f} MiB)")
    print("goals: scoring >= 40 %, training >= 25 %")


if __name__ == "__main__":
    main()
