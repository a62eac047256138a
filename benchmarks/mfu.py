"""Model-FLOPs utilisation of loralab's hot paths, each against the peak of the format it runs in
and against the machine's fastest format.

    .venv/bin/python benchmarks/mfu.py

Peaks (GFLOP/s): per format, the better of loralab.device's measurement at the model's own
shapes and a square 2048 matmul (fp32, bf16); int8 dynamic from the device measurement.
Model FLOPs, SmolLM2-135M:
  forward, per decoder position   2 x non-embedding params + causal attention (QK^T, AV)
  vocabulary projection, per row  2 x hidden x vocab (only rows whose logits are needed)
  training, per position          2 x forward (frozen base: the backward pass computes
                                  input gradients only) + 2 x projection per labelled row
                                  (the fused loss forms logits and their gradient once)
Paths: scoring exact and fast (IFD of 48 MedMCQA Q&A records), evaluation (200 ARC-Easy
items, every choice, in the frozen-weight format the policy chose), training (LoRA r=8
all-linear, packed 8 x 256 rows of NFL passages, in the training format the policy chose,
3 timed steps after one warm-up). Work counted is the work actually run (shared prefixes once).
"""

from __future__ import annotations

import resource
import tempfile
import time

import torch

from _common import bf16_matmul_flops, forward_flops_per_token


def rss() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scoring(precision, fpt, head, n: int = 48) -> tuple[float, float]:
    from score import medmcqa

    from loralab.score import ScoreConfig, load_scorer, score_records

    recs = medmcqa(n)
    cfg = ScoreConfig(cache=False, progress=False, precision=precision)
    loaded = load_scorer(cfg)
    t0 = time.perf_counter()
    res = score_records(list(enumerate(recs, 1)), cfg, loaded)
    t = time.perf_counter() - t0
    n_resp = sum(r.meta["score"]["n_resp_tokens"] for r in res.records)
    return fpt * res.stats["computed_tokens"] + head * 2 * n_resp, t


def evaluation(loaded, fpt, head, n: int = 200) -> tuple[float, float]:
    from loralab.evaluate import tasks as T
    from loralab.logprobs import encode_pair, token_logprobs

    items = T.get("arc_easy").all_items()[:n]
    enc = [encode_pair(loaded.tokenizer, c, x, bos=False) for it in items for c, x in it.pairs()]
    stats: dict = {}
    t0 = time.perf_counter()
    token_logprobs(loaded.model, enc, stats=stats)
    t = time.perf_counter() - t0
    return fpt * stats["computed_tokens"] + head * sum(len(x) for _, x in enc), t


def training(fpt, head, dtype: str, steps: int = 3) -> tuple[float, float]:
    from peft import LoraConfig, get_peft_model

    from loralab import models
    from loralab.data.ingest import IngestConfig, ingest
    from loralab.data.records import read_records
    from loralab.fastlora import fast_lora
    from loralab.losses import make_loss
    from loralab.packing import Batcher, encode_records

    loaded = models.load("smollm2-135m", dtype=dtype)
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
        for step in range(steps + 1):
            (batch,) = batcher.step(step, 1)
            t0 = time.perf_counter()
            loss, st = loss_fn(model, batch)
            loss.backward()
            dt = time.perf_counter() - t0
            if step:  # the first step warms up
                flops += 2 * fpt * batch["input_ids"].numel() + 2 * head * float(st["tokens"])
                secs += dt
    return flops, secs


def peaks(prof) -> dict[str, float]:
    """FLOP/s per format: the better of the device measurement and a square 2048 matmul."""
    out = {k: v * 1e9 for k, v in prof.gflops.items()}
    for dt in ("float32", "bfloat16"):
        out[dt] = max(out.get(dt, 0.0), bf16_matmul_flops(dtype=getattr(torch, dt)))
    return out


def main() -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=48, help="MedMCQA records scored")
    ap.add_argument("--items", type=int, default=200, help="ARC-Easy items evaluated")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps (after one warm-up)")
    a = ap.parse_args()
    from loralab import device, models

    from _common import machine_line

    prof = device.profile(device.resolve_device("auto"))
    pk = peaks(prof)
    best = max(pk, key=pk.get)
    print(machine_line(prof))
    print("peaks: " + ", ".join(f"{k} {v / 1e12:.3f} TFLOP/s" for k, v in pk.items()) + f"; fastest: {best}")
    from loralab.score import ScoreConfig, load_scorer

    frozen, train_fmt = prof.choose("frozen"), prof.choose("train")
    # fast scoring's format: the fastest that passed the rank check on this model (loralab.fidelity)
    fast = device.precision_record(load_scorer(ScoreConfig(precision="fast", cache=False)).model)["format"]
    loaded = models.load("smollm2-135m", dtype=frozen)
    cfg = loaded.model.config
    head = 2 * cfg.hidden_size * cfg.vocab_size
    print(f"{'path':30s}{'TFLOP':>7s}{'s':>7s}{'GFLOP/s':>9s}{'MFU own':>9s}{'MFU best':>9s}")
    for name, fmt, fn, seq in ((f"scoring exact (float32)", "float32", lambda f: scoring("exact", f, head, a.records), 90),
                               (f"scoring fast ({fast})", fast, lambda f: scoring("fast", f, head, a.records), 90),
                               (f"evaluation ({frozen})", frozen, lambda f: evaluation(loaded, f, head, a.items), 40),
                               (f"training ({train_fmt} base)", train_fmt, lambda f: training(f, head, train_fmt, a.steps), 128)):
        flops, secs = fn(forward_flops_per_token(cfg, seq))
        g = flops / secs
        print(f"{name:30s}{flops / 1e12:7.2f}{secs:7.1f}{g / 1e9:9.1f}{g / pk[fmt]:9.1%}{g / pk[best]:9.1%}"
              f"   (peak RSS so far {rss():.0f} MiB)", flush=True)
    print("MFU own: against the peak of the format the path runs in; best: against the fastest format here")


if __name__ == "__main__":
    main()
