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
non-`nn.Linear` base (e.g. 4-bit or int8), extra arguments, or an input whose dtype is not
the base's. Adapters kept in fp32 over a bf16 base (master weights) run their two small
matmuls in bf16 too: the casts touch only the (r, in) and (out, r) matrices, and gradients
flow back to the fp32 weights.
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
    if not x.dtype == base.weight.dtype or A.dtype != B.dtype:
        return original(self, x, *args, **kwargs)
    if A.dtype != x.dtype:  # fp32 master weights on a low-precision base: the update runs in the
        A, B = A.to(x.dtype), B.to(x.dtype)  # base's format (autocast's casts, on (r, in) + (out, r) only)
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
    with _forwards(model, [m for m in model.modules() if type(m) is LoraLinear], _lean_forward):
        yield model


@contextlib.contextmanager
def _forwards(model, modules, forward, **attrs):
    """Within the block, each of `modules` not already patched runs `forward` (with `attrs`
    set on it per module: {name: {module: value}}); all restored on exit."""
    swapped = []
    for m in modules:
        if "forward" not in m.__dict__:
            for k, per in attrs.items():
                setattr(m, k, per[m])
            m.forward = types.MethodType(forward, m)
            swapped.append(m)
    try:
        yield model
    finally:
        for m in swapped:
            del m.forward
            for k in attrs:
                delattr(m, k)


# ---------------------------------------------------------------- stacked adapters (serving)
#
# Serving keeps one base model and many adapters resident: for every adapted linear layer the
# adapters are stacked, A (S, r, in) and Bt (S, r, out) (each adapter's B transposed), slot 0
# all zeros (the base), ranks zero-padded to the largest (zero rows add exactly nothing).
# Each batch row names its adapters: slots (K, N) and scales (K, N) = strength (the LoRA
# scaling is folded into Bt); K > 1 composes several adapters in one row. The forward below
# is the update of `_lean_forward`, base(x) + s * (x A^T) B^T, for every row's own adapters
# at once, in a fixed number of kernels whatever the number of adapters:
#   one adapter at one scale over the whole batch: exactly the lean addmm;
#   few resident slots (S * r <= DENSE_MAX): x @ [A_1; ...; A_S]^T for all slots in one
#     matmul, each row's columns weighted by its scale of that slot (0 elsewhere), then one
#     addmm with [B_1^T; ...; B_S^T]: three kernels, no gather;
#   otherwise each row gathers its own A and Bt and two batched matmuls run (per composed k).
# No per-adapter Python loop and no PEFT set_adapter swapping.

DENSE_MAX = 128  # largest S * r (stacked rank over every slot) run as one dense matmul


class RowAdapters:
    """Which adapters each batch row uses: slots (K, N) long, scales (K, N) float."""

    def __init__(self, slots: torch.Tensor, scales: torch.Tensor, n_slots: int | None = None,
                 rank: int | None = None, dense_max: int | None = None):
        self.slots, self.scales = slots, scales
        s0 = slots[0]
        uniform = slots.shape[0] == 1 and bool((s0 == s0[0]).all()) and bool((scales[0] == scales[0, 0]).all())
        # (slot, scale) when one adapter at one scale covers every row: the lean path
        self.single = (int(s0[0]), float(scales[0, 0])) if uniform else None
        self.dense = None  # (N, S * r): each row's weight on every stacked rank column
        # per-row gathered factors {(id(A), k): (A[idx], Bt[idx])}, kept while the same rows decode
        # step after step (None: gathered anew at every call)
        self.gathered: dict | None = None
        dense_max = DENSE_MAX if dense_max is None else dense_max
        if self.single is None and n_slots and rank and n_slots * rank <= dense_max:
            w = torch.zeros((slots.shape[1], n_slots), dtype=torch.float32, device=slots.device)
            w.scatter_add_(1, slots.t(), scales.t().float())  # (N, S): composed weights add up
            w[:, 0] = 0.0  # slot 0 is the base
            self.dense = w.repeat_interleave(rank, dim=1)

    @classmethod
    def of(cls, rows: list[list[tuple[int, float]]], device=None, n_slots: int | None = None,
           rank: int | None = None, dense_max: int | None = None) -> "RowAdapters":
        """From each row's [(slot, scale)] (an empty list = the base)."""
        K = max(1, max((len(r) for r in rows), default=1))
        slots = torch.zeros((K, len(rows)), dtype=torch.long)
        scales = torch.zeros((K, len(rows)), dtype=torch.float32)
        for n, r in enumerate(rows):
            for k, (s, c) in enumerate(r):
                slots[k, n], scales[k, n] = s, c
        return cls(slots.to(device), scales.to(device), n_slots, rank, dense_max)


def stacked_lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        A: torch.Tensor, Bt: torch.Tensor, rows: RowAdapters) -> torch.Tensor:
    """F.linear(x, W, b) + each row's scaled LoRA updates; x (N, T, in), A (S, r, in), Bt (S, r, out).

    Factors in another dtype than x (fp32 beside a bf16 base, as the serving bank keeps them) are
    applied in their own dtype and the update is cast once: on CPU a (1, 576) x (576, 8) bf16 GEMM
    took 148 us against 3 us in fp32 (oneDNN's fixed cost), which made every decode step with an
    adapter a third slower than the base's."""
    out = F.linear(x, weight, bias)  # (N, T, out)
    d = lora_update(x.to(A.dtype), A, Bt, rows)
    return out if d is None else out + d.to(out.dtype)


def lora_update(x: torch.Tensor, A: torch.Tensor, Bt: torch.Tensor, rows) -> torch.Tensor | None:
    """(N, T, out) sum of each row's scaled LoRA updates in the factors' dtype (None: base rows only)."""
    if rows.single is not None:
        s, c = rows.single
        if s == 0 or c == 0.0:
            return None  # the base: nothing added
        return (F.linear(x, A[s]) @ Bt[s]) * c  # (N, T, r) @ (r, out)
    S, r = A.shape[0], A.shape[1]
    if rows.dense is not None and rows.dense.shape[1] == S * r:
        a = F.linear(x, A.reshape(S * r, -1))  # (N, T, S*r): every slot's rank columns at once
        a = a * rows.dense.to(a.dtype)[:, None, :]  # each row keeps its own slots' columns, scaled
        return a @ Bt.reshape(S * r, -1)
    d = None
    for k in range(rows.slots.shape[0]):
        idx = rows.slots[k]
        got = None if rows.gathered is None else rows.gathered.get((id(A), k))
        if got is None:
            got = (A[idx].transpose(1, 2), Bt[idx])  # (N, in, r), (N, r, out): copies of each row's factors
            if rows.gathered is not None:
                rows.gathered[(id(A), k)] = got
        a = torch.bmm(x, got[0]) * rows.scales[k].to(A.dtype).view(-1, 1, 1)  # (N, T, r)
        d = torch.bmm(a, got[1]) if d is None else torch.baddbmm(d, a, got[1])  # + (N, T, r) @ (N, r, out)
    return d


def _stacked_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    bank, name = self._loralab_bank
    stack = bank.stacks.get(name)
    rows = bank.rows
    if stack is None or rows is None or args or kwargs or x.dim() != 3:
        return type(self).forward(self, x, *args, **kwargs)
    return stacked_lora_linear(x, self.weight, self.bias, stack[0], stack[1], rows)


@contextlib.contextmanager
def stacked_lora(model, bank):
    """Within the block, the model's nn.Linear layers named in `bank.stacks` add the stacked adapters.

    `bank` is any object with `.stacks` {module name: (A (S, r, in), Bt (S, r, out))} and
    `.rows` (a RowAdapters for the current batch, or None for the plain base); both are read
    at every call, so adapters can be added and batches changed inside the block. Module
    names are those of `model.named_modules()`; the output head is never adapted.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    named = {m: (bank, name) for name, m in model.named_modules() if type(m) is torch.nn.Linear and m is not head}
    with _forwards(model, list(named), _stacked_forward, _loralab_bank=named):
        yield model
