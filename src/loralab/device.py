"""Device and dtype policy, in one place.

CUDA when present (bf16 when the GPU supports it, else fp16 for frozen weights).
On CPU, frozen / inference weights are bf16 when the processor has AMX bf16 tiles,
else fp32. AVX-512 BF16 alone is not enough: on such a Xeon (avx512_bf16, no AMX)
oneDNN's bf16 matmul measured *slower* than MKL's fp32 sgemm (2048x576x1536, one
thread: 56 vs 89 GFLOP/s; SmolLM2 forward likewise), so bf16 there would cost speed
and precision for nothing. Trainable weights are always fp32.
Every entry point accepts an override (`--device`, `--dtype`); LORALAB_CPU_BF16=1|0
forces the CPU choice.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@functools.cache
def _cpu_flags() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            return f.read()
    except OSError:
        return ""


def cpu_has_bf16() -> bool:
    """True when bf16 is the fast choice for frozen weights on this CPU (AMX bf16 tiles)."""
    forced = os.environ.get("LORALAB_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return "amx_bf16" in _cpu_flags()


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # dtype of frozen (inference) weights

    def __str__(self) -> str:
        return f"{self.device.type}/{str(self.dtype).removeprefix('torch.')}"


def resolve(device: str = "auto", dtype: str = "auto") -> Placement:
    """Resolve 'auto' device/dtype into a concrete placement for frozen weights."""
    if device == "auto":
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        dev = torch.device(device)
    if dtype == "auto":
        if dev.type == "cuda":
            dt = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif dev.type == "cpu":
            dt = torch.bfloat16 if cpu_has_bf16() else torch.float32
        else:
            dt = torch.float32
    else:
        if dtype not in DTYPES:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(DTYPES))}")
        dt = DTYPES[dtype]
    return Placement(dev, dt)
