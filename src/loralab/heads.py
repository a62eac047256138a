"""The decoder body and the vocabulary head, as the log-prob engine and the training losses
both use them (one implementation).

The decoder runs alone (`decoder_hidden`), so no (B, T, V) logits ever appear; callers keep
the positions they need, (N, H), and project those through `logits_fn(model)` in chunks
(fp32 logits, soft-capped when the model caps them). `plain_head_weight` is the frozen
output matrix when the head is a plain bias-free linear layer (the fused loss uses it).
"""

from __future__ import annotations

from typing import Callable

import torch


def decoder_hidden(model, ids: torch.Tensor, mask: torch.Tensor | None = None,
                   pos: torch.Tensor | None = None, layout=None) -> torch.Tensor:
    """(B, T, H) last hidden states of the decoder alone.

    `mask` is None (every row one causal sequence, or packed sequences told apart by
    restarting `pos`), a (B, T) padding mask, or a (B, 1, T, T) boolean mask (True = may
    attend) with explicit position ids `pos` for prefix-shared rows. An activated LoRA
    (aLoRA) gets PEFT's offsets, as its own forward computes them. `layout` (a
    rowattn.RowLayout of those rows) computes only the attention blocks the mask allows.
    """
    import contextlib

    from .adapters import alora_context

    rows, extra = contextlib.nullcontext(), {}
    if layout is not None:  # the block attention reads the layout; the mask stays for any other path
        from .rowattn import use_rows

        rows, extra = use_rows(model), {"loralab_rows": layout}
    elif mask is not None and mask.dim() == 4 and getattr(model.config, "_attn_implementation", "sdpa") != "sdpa":
        dt = next(model.parameters()).dtype  # eager & co. add a float mask to the scores
        mask = torch.zeros(mask.shape, dtype=dt, device=mask.device).masked_fill(~mask, torch.finfo(dt).min)
    with rows, alora_context(model, ids):
        out = model.get_decoder()(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, **extra)
    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def logits_fn(model, fp32: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """h (rows, H) -> logits (rows, V) through the model's own head (soft-capped if it caps):
    fp32, or with `fp32=False` in the head's own dtype when it does not cap (the caller then
    widens a few rows at a time, so no (rows, V) fp32 block is ever written at once)."""
    head = model.get_output_embeddings()
    cap = getattr(model.config, "final_logit_softcapping", None)

    def fn(h: torch.Tensor) -> torch.Tensor:
        logits = head(h)
        if fp32 or cap:
            logits = logits.float()  # (rows, V) fp32
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    return fn


def plain_head_weight(model) -> torch.Tensor | None:
    """The output layer's weight when the head is a frozen, bias-free nn.Linear without soft-capping."""
    head = model.get_output_embeddings()
    if type(head) is not torch.nn.Linear or head.bias is not None or head.weight.requires_grad:
        return None
    if getattr(model.config, "final_logit_softcapping", None):
        return None
    return head.weight
