"""Training losses over decoder hidden states, chunked over positions.

The decoder runs once, giving (B, T, H) hidden states; only labelled positions are
kept, (N, H), and the vocabulary projection + fp32 cross-entropy runs over chunks of
`chunk` rows, so at most one (chunk, V) fp32 block is alive at a time.

With a plain frozen output layer (the LoRA case) the cross-entropy is fused with the
projection (`FusedLinearCE`): each chunk's gradient with respect to its hidden rows,
(softmax - onehot) @ W, is formed in the forward pass while the logits are at hand, and
the backward pass only scales it; the logits are never stored nor recomputed. Any other
head (trainable, soft-capped, wrapped) takes the general path: each chunk under
activation checkpointing, its logits recomputed in the backward pass.

A loss function has the signature `loss_fn(model, batch) -> (loss, stats)`, where
`stats` holds detached sums (`ce_sum`, `tokens`, `kl_sum`, `kl_tokens`) so that callers
can form token-weighted means across micro-batches and processes.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .adapters import peft_model
from .heads import decoder_hidden, logits_fn, plain_head_weight  # noqa: F401 (re-exported)

LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def batch_hidden(model, batch: dict) -> torch.Tensor:
    """(B, T, H) last hidden states for a (possibly packed) batch; no (B, T, V) logits.

    attention_mask=None + restarting position_ids -> block-diagonal causal attention."""
    return decoder_hidden(model, batch["input_ids"], pos=batch["position_ids"])


class FusedLinearCE(torch.autograd.Function):
    """Σ_i CE(h_i W^T, t_i) over rows, the gradient w.r.t. h computed in the forward pass.

    W (V, H) must not need a gradient. Logits are fp32 (computed in W's dtype, then cast,
    as `heads.logits_fn` does); the returned gradient is in h's dtype.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
        want_grad = ctx.needs_input_grad[0]
        grad = torch.empty_like(h) if want_grad else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s: s + chunk], targets[s: s + chunk]
            logits = (hc.to(weight.dtype) @ weight.t()).float()  # (chunk, V)
            lse = torch.logsumexp(logits, dim=-1)
            total += (lse - logits.gather(1, tc[:, None])[:, 0]).sum()
            if want_grad:
                p = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                p[torch.arange(p.shape[0], device=p.device), tc] -= 1.0
                grad[s: s + chunk] = (p.to(weight.dtype) @ weight).to(h.dtype)
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * g.to(grad.dtype), None, None, None


def ce_sum(model, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of fp32 next-token CE of targets (N,) from hidden rows h (N, H): fused when the head allows."""
    w = plain_head_weight(model)
    if w is not None:
        return FusedLinearCE.apply(h, w, targets, chunk)
    return chunked_ce_sum(logits_fn(model), h, targets, chunk)


def chunked_ce_sum(logits_of, h: torch.Tensor, targets: torch.Tensor, chunk: int) -> torch.Tensor:
    """Sum of fp32 cross-entropy of targets (N,) given hidden rows h (N, H), `chunk` rows at a time."""
    def part(hc: torch.Tensor, tc: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits_of(hc), tc, reduction="sum")  # (chunk, V) fp32 inside only

    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk):
        hc, tc = h[s: s + chunk], targets[s: s + chunk]
        total = total + (checkpoint(part, hc, tc, use_reentrant=False) if hc.requires_grad else part(hc, tc))
    return total


def chunked_kl_sum(logits_of, h_base: torch.Tensor, h: torch.Tensor, chunk: int) -> torch.Tensor:
    """Σ KL(base ‖ adapter) over rows: base hidden h_base (N, H, no grad) vs adapter hidden h (N, H)."""
    def part(hb: torch.Tensor, ha: torch.Tensor) -> torch.Tensor:
        lp_b = torch.log_softmax(logits_of(hb), dim=-1)  # (chunk, V) fp32
        lp_a = torch.log_softmax(logits_of(ha), dim=-1)
        return F.kl_div(lp_a, lp_b, log_target=True, reduction="sum")  # Σ p_b (log p_b - log p_a)

    total = h.new_zeros((), dtype=torch.float32)
    for s in range(0, h.shape[0], chunk):
        hb, ha = h_base[s: s + chunk], h[s: s + chunk]
        total = total + (checkpoint(part, hb, ha, use_reentrant=False) if ha.requires_grad else part(hb, ha))
    return total


def make_loss(*, chunk: int = 1024, kl_weight: float = 0.0) -> LossFn:
    """Mean next-token CE over labelled tokens (+ λ · mean KL(base ‖ adapter) on anchor positions)."""

    def loss_fn(model, batch: dict) -> tuple[torch.Tensor, dict]:
        hidden = batch_hidden(model, batch)[:, :-1]  # (B, T-1, H): position t predicts t+1
        targets = batch["labels"][:, 1:]
        sel = targets != -100
        n = sel.sum()
        ce = ce_sum(model, hidden[sel], targets[sel], chunk)
        loss = ce / n.clamp(min=1)
        stats = {"ce_sum": ce.detach(), "tokens": n.detach()}
        kmask = batch["kl_mask"][:, :-1]
        if kl_weight > 0 and bool(kmask.any()):
            with torch.no_grad(), peft_model(model).disable_adapter():
                base = batch_hidden(model, batch)[:, :-1][kmask]  # (K, H) base hidden, no grad
            kl = chunked_kl_sum(logits_fn(model), base, hidden[kmask], chunk)
            k = kmask.sum()
            loss = loss + kl_weight * kl / k
            stats.update(kl_sum=kl.detach(), kl_tokens=k.detach())
        return loss, stats

    return loss_fn


class Objective(torch.nn.Module):
    """`loss_fn(model, batch)` as a module, so DDP (accelerate) sees the forward that makes the loss."""

    def __init__(self, model: torch.nn.Module, loss_fn: LossFn):
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(self.model, batch)
