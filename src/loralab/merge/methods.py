"""Merge methods on delta tensors: one implementation each, for adapters and full models alike.

A *delta* is what a parent adds to the base: `s·B·A` (out, in) for a LoRA module, or
`W_i − W_base` for a full model's tensor (or `W_i` itself, for methods that need no base).
`merge_deltas(method, deltas, weights, params, name)` dispatches one tensor; everything
else here is the arithmetic, written to give mergekit's numbers where mergekit has the
method (task arithmetic, TIES, DARE, SLERP):

- linear        Σ w_i·d_i                                            (task arithmetic)
- magnitude     each d_i keeps its top `density` fraction by |value|, then Σ w_i·d_i
- ties          magnitude pruning, sign election (by `sum` of weighted values or by
                `count` of signs), disjoint sum divided by Σ w_i over agreeing parents
- dare_linear   each d_i keeps a Bernoulli(`density`) sample, rescaled, then Σ w_i·d_i
- dare_ties     DARE's drop + rescale, then TIES' sign election (no division by default)
- slerp         spherical interpolation between two tensors at `t`, falling back to
                linear interpolation when they are nearly parallel (|cos| > 0.9995)
- cat / svd     are about factors, not values: `cat_factors` stacks LoRA factors
                (exact), `low_rank` truncates any delta to a chosen rank with its error
                (`low_rank_product` does the same for a delta given as factors B·A).

Randomness (DARE) is seeded per tensor and parent (`seed`, tensor name, parent index) and
drawn on the CPU, so a merge is reproducible whatever the device or the tensor order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Sequence

import torch

Rescale = Literal["inverse", "l1", "none"]
Sign = Literal["sum", "count"]

METHODS = ("linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "slerp", "magnitude")
NEEDS_BASE = ("ties", "dare_linear", "dare_ties", "magnitude")  # full models: act on W_i − W_base
# trimming or dropping entries makes a full-rank delta (slerp of two deltas is a linear combination: Σr is exact)
FULL_RANK = NEEDS_BASE
SLERP_DOT_THRESHOLD = 0.9995  # mergekit's: above it, SLERP is linear interpolation
EPS = 1e-8


@dataclass(frozen=True)
class Params:
    """Method parameters (each method reads only its own)."""

    density: float = 1.0  # fraction kept by magnitude / ties / dare (dare: 1 − drop rate)
    sign: Sign = "sum"  # ties / dare_ties sign election
    rescale: Rescale = "inverse"  # dare: kept values / density (DARE paper), or match L1 norm (mergekit)
    normalize: bool | None = None  # ties-family division by Σ w over agreeing parents; None: method default
    t: float = 0.5  # slerp position between the first (0) and second (1) parent
    seed: int = 0  # dare


def _work(x: torch.Tensor) -> torch.Tensor:
    """fp64 stays fp64; everything else computes in fp32."""
    return x if x.dtype == torch.float64 else x.float()


# ----------------------------------------------------------------- sparsify

def magnitude_mask(delta: torch.Tensor, density: float) -> torch.Tensor:
    """1 on the top `density` fraction of |delta| (at least one value when density > 0), else 0."""
    if density >= 1:
        return torch.ones_like(delta)
    mask = torch.zeros(delta.numel(), dtype=delta.dtype, device=delta.device)
    if density <= 0 or delta.numel() == 0:
        return mask.reshape(delta.shape)
    k = max(1, int(density * delta.numel()))
    mask[torch.argsort(delta.abs().reshape(-1).float(), descending=True)[:k]] = 1
    return mask.reshape(delta.shape)


def rescaled(delta: torch.Tensor, mask: torch.Tensor, density: float, how: Rescale) -> torch.Tensor:
    """delta·mask, rescaled: `inverse` divides by density (unbiased: E[result] = delta);
    `l1` scales to the unmasked L1 norm (mergekit's DARE); `none` leaves it."""
    kept = delta * mask
    if how == "none" or density >= 1:
        return kept
    if how == "inverse":
        return kept / density if density > 0 else kept
    before, after = delta.abs().sum(), kept.abs().sum()
    if before < 1e-7 or after < 1e-7:
        return kept
    return kept * (before / after)


def tensor_seed(seed: int, name: str, index: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}:{index}".encode()).digest()[:8], "little") >> 1


def dare_mask(delta: torch.Tensor, density: float, seed: int) -> torch.Tensor:
    """Bernoulli(density) keep-mask, drawn on the CPU from its own seeded generator."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    m = torch.bernoulli(torch.full(delta.shape, float(density), dtype=torch.float32), generator=g)
    return m.to(device=delta.device, dtype=delta.dtype)


# ----------------------------------------------------------------- combine

def elect(weighted: torch.Tensor, how: Sign) -> torch.Tensor:
    """(P, ...) mask of the values whose sign agrees with the elected one (ties go to +)."""
    sign = weighted.sign()
    total = weighted.sum(0) if how == "sum" else sign.sum(0)
    majority = (total >= 0).to(weighted.dtype) * 2 - 1
    return (sign == majority).to(weighted.dtype)


def combine(deltas: Sequence[torch.Tensor], weights: Sequence[float], *, consensus: Sign | None,
            normalize: bool) -> torch.Tensor:
    """Σ w_i·d_i, optionally only over the values agreeing with the elected sign and
    divided by the sum of the agreeing parents' weights (mergekit's generalized task arithmetic)."""
    stacked = torch.stack([_work(d) for d in deltas])  # (P, ...)
    w = torch.tensor(list(weights), dtype=stacked.dtype, device=stacked.device).reshape(-1, *[1] * (stacked.dim() - 1))
    weighted = stacked * w
    if consensus is not None:
        mask = elect(weighted, consensus)
        mixed = (weighted * mask).sum(0)
        divisor = (w * mask).sum(0)
        divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(0)
        divisor = w.sum(0)
        divisor[divisor.abs() < 1e-8] = 1
    return mixed / divisor if normalize else mixed


def slerp(t: float, a: torch.Tensor, b: torch.Tensor, dot_threshold: float = SLERP_DOT_THRESHOLD) -> torch.Tensor:
    """Spherical interpolation of the whole tensors (as vectors) at t; linear when nearly parallel.

    The angle comes from the normalised vectors; the interpolation weights apply to the
    tensors themselves (so their norms interpolate too), as in mergekit.
    """
    x, y = _work(a).reshape(-1), _work(b).reshape(-1)
    na, nb = torch.linalg.vector_norm(x), torch.linalg.vector_norm(y)
    na = na if na > EPS else torch.ones_like(na)
    nb = nb if nb > EPS else torch.ones_like(nb)
    dot = ((x / na) * (y / nb)).sum().clamp(-1, 1)
    if dot.abs() > dot_threshold:
        return ((1 - t) * x + t * y).reshape(a.shape)
    theta = torch.acos(dot)
    s = torch.sin(theta)
    return (torch.sin((1 - t) * theta) / s * x + torch.sin(t * theta) / s * y).reshape(a.shape)


# ----------------------------------------------------------------- dispatch

def default_normalize(method: str) -> bool:
    return method == "ties"  # mergekit's defaults: TIES divides, DARE-TIES does not


def merge_deltas(method: str, deltas: Sequence[torch.Tensor], weights: Sequence[float], p: Params,
                 name: str = "") -> torch.Tensor:
    """The merged delta of one tensor (fp32, or fp64 for fp64 input). `name` seeds DARE."""
    if len(deltas) != len(weights):
        raise ValueError(f"{len(weights)} weights for {len(deltas)} tensors")
    normalize = default_normalize(method) if p.normalize is None else p.normalize
    if method in ("linear", "cat", "svd"):
        return combine(deltas, weights, consensus=None, normalize=False)
    if method == "magnitude":
        return combine([d * magnitude_mask(d, p.density) for d in deltas], weights, consensus=None, normalize=False)
    if method == "ties":
        pruned = [d * magnitude_mask(d, p.density) for d in deltas]
        return combine(pruned, weights, consensus=p.sign, normalize=normalize)
    if method in ("dare_linear", "dare_ties"):
        dropped = [rescaled(_work(d), dare_mask(d, p.density, tensor_seed(p.seed, name, i)), p.density, p.rescale)
                   for i, d in enumerate(deltas)]
        return combine(dropped, weights, consensus=p.sign if method == "dare_ties" else None, normalize=normalize)
    if method == "slerp":
        if len(deltas) != 2:
            raise ValueError(f"slerp merges exactly two parents, got {len(deltas)}")
        return slerp(p.t, deltas[0], deltas[1])
    raise ValueError(f"unknown merge method {method!r}; one of {', '.join(METHODS)}")


# ----------------------------------------------------------------- factors

def cat_factors(As: Sequence[torch.Tensor], Bs: Sequence[torch.Tensor], coefs: Sequence[float]):
    """(A, B) with B·A = Σ coef_i·B_i·A_i exactly: A stacks coef_i·A_i (Σr, in), B stacks B_i (out, Σr)."""
    return (torch.cat([_work(a) * c for a, c in zip(As, coefs)], 0),
            torch.cat([_work(b) for b in Bs], 1))


@dataclass
class LowRank:
    B: torch.Tensor  # (out, rank): U·S
    A: torch.Tensor  # (rank, in): Vᵀ
    rank: int  # columns kept (≤ requested: min(rank, out, in))
    numeric_rank: int  # singular values above the fp tolerance: the delta's exact rank
    rel_error: float  # ‖D − B·A‖_F / ‖D‖_F, from the discarded singular values
    norm: float  # ‖D‖_F


def rank_within(S: torch.Tensor, max_error: float) -> int:
    """The smallest rank whose truncation of singular values `S` (descending) loses at most
    `max_error` of the Frobenius norm: ‖S[r:]‖ <= max_error · ‖S‖."""
    sq = S.double() ** 2
    tail = torch.flip(torch.cumsum(torch.flip(sq, [0]), 0), [0])  # tail[k] = Σ_{i>=k} S_i²
    total = float(sq.sum())
    if total == 0:
        return 0
    ok = torch.nonzero(torch.cat([tail, tail.new_zeros(1)]) <= (max_error ** 2) * total)
    return int(ok[0])


def low_rank(delta: torch.Tensor, rank: int | None, max_error: float | None = None) -> LowRank:
    """Best rank-`rank` factors of `delta` (Eckart–Young) with the exact relative Frobenius error;
    `rank` None: the smallest rank within `max_error` (relative Frobenius)."""
    d = _work(delta)
    U, S, Vh = torch.linalg.svd(d, full_matrices=False)
    r = min(rank, S.numel()) if rank is not None else max(1, rank_within(S, max_error or 0.0))
    tol = (S[0] * max(d.shape) * torch.finfo(d.dtype).eps) if S.numel() else 0.0
    total = float(torch.linalg.vector_norm(S.double()))
    tail = float(torch.linalg.vector_norm(S[r:].double()))
    return LowRank(B=U[:, :r] * S[:r], A=Vh[:r], rank=r, numeric_rank=int((S > tol).sum()),
                   rel_error=tail / total if total > 0 else 0.0, norm=total)


def low_rank_product(B: torch.Tensor, A: torch.Tensor, rank: int) -> LowRank:
    """`low_rank(B @ A, rank)` without forming B @ A: QR of both factors, SVD of the small core.

    B (out, R), A (R, in): B = Q1·R1, Aᵀ = Q2·R2, so B·A = Q1·(R1·R2ᵀ)·Q2ᵀ and the SVD of the
    (R, R) core gives that of the product (same singular values, same truncation)."""
    B, A = _work(B), _work(A)
    q1, r1 = torch.linalg.qr(B)
    q2, r2 = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(r1 @ r2.T)
    r = min(rank, S.numel())
    tol = (S[0] * max(B.shape[0], A.shape[1]) * torch.finfo(B.dtype).eps) if S.numel() else 0.0
    total = float(torch.linalg.vector_norm(S.double()))
    tail = float(torch.linalg.vector_norm(S[r:].double()))
    return LowRank(B=(q1 @ U[:, :r]) * S[:r], A=Vh[:r] @ q2.T, rank=r, numeric_rank=int((S > tol).sum()),
                   rel_error=tail / total if total > 0 else 0.0, norm=total)


def finite(x: torch.Tensor) -> bool:
    """No inf or nan in x (an inf or nan anywhere makes the sum non-finite; no (x.shape) bool mask made)."""
    return bool(torch.isfinite(x.sum()))
