"""Device and dtype policy, in one place.

CUDA when present (bf16 when the GPU supports it, else fp16 for frozen weights).
On CPU, frozen / inference weights are bf16 when the processor has native bf16
(AVX-512 BF16 or AMX), else fp32. Trainable weights are always fp32.
Every entry point accepts an override (`--device`, `--dtype`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU computes bf16 natively (AVX-512 BF16 or AMX tiles)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


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
