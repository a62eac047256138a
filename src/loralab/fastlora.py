"""A leaner forward for PEFT's plain LoRA linear layers (training and scoring).

PEFT computes `result = base(x) + lora_B(lora_A(dropout(x))) * scaling`: besides the two
small matmuls, that is a full-size (tokens x out) multiply and add in the forward pass
and again in the backward pass, for every adapted layer. Here the scaled low-rank
update is accumulated into the base output by one `addmm` (C = C + s * A B^T inside the
GEMM), which autograd differentiates without any full-size elementwise pass.

`fast_lora(model)` swaps the forward of every eligible `peft.tuners.lora.Linear` for the
duration of a `with` block. Each call falls back to PEFT's own forward whenever the
lean path would not be identical in meaning: adapters disabled or merged, a
mixed-adapter batch, several active adapters, a LoRA variant (DoRA, aLoRA), a
non-`nn.Linear` base (e.g. 4-bit), extra arguments, or mixed dtypes.
"""

from __future__ import annotations

import contextlib
import types

import torch
import torch.nn.functional as F


def _lean_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    original = type(self).forward
    if args or kwargs or self.disable_adapters or self.merged or len(self.active_adapters) != 1:
        return original(self, x, *args, **kwargs)
    name = self.active_adapters[0]
    base = self.base_layer
    if name not in self.lora_A or name in self.lora_variant or type(base) is not torch.nn.Linear:
        return original(self, x, *args, **kwargs)
    A, B = self.lora_A[name].weight, self.lora_B[name].weight
    if not (x.dtype == base.weight.dtype == A.dtype == B.dtype):
        return original(self, x, *args, **kwargs)
    out = F.linear(x, base.weight, base.bias)
    a = F.linear(self.lora_dropout[name](x), A)  # (..., r)
    flat = torch.addmm(out.reshape(-1, out.shape[-1]), a.reshape(-1, a.shape[-1]), B.t(), alpha=self.scaling[name])
    return flat.view(out.shape)


@contextlib.contextmanager
def fast_lora(model):
    """Within the block, PEFT LoRA linear layers of `model` use the lean forward."""
    try:
        from peft.tuners.lora.layer import Linear as LoraLinear
    except ImportError:  # no PEFT, nothing to do
        yield model
        return
    swapped = []
    for m in model.modules():
        if type(m) is LoraLinear and "forward" not in m.__dict__:
            m.forward = types.MethodType(_lean_forward, m)
            swapped.append(m)
    try:
        yield model
    finally:
        for m in swapped:
            del m.forward
