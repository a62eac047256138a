"""The lean LoRA forward equals PEFT's own: outputs and every gradient."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model

from loralab.fastlora import fast_lora


def _model(tiny, dropout=0.0, **kw):
    m = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, lora_alpha=12, lora_dropout=dropout,
                                                             target_modules="all-linear", **kw))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.3)
    return m


def _run(m, ids, seed):
    torch.manual_seed(seed)
    out = m(input_ids=ids, use_cache=False).logits
    loss = out.float().pow(2).mean()
    params = [p for p in m.parameters() if p.requires_grad]
    return out.detach(), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_lean_forward_equals_peft(tiny, dropout):
    m = _model(tiny, dropout)
    m.train()
    ids = torch.randint(5, 1000, (3, 17))
    ref_out, ref_grads = _run(m, ids, 0)
    with fast_lora(m):
        assert any("forward" in mod.__dict__ for mod in m.modules())
        out, grads = _run(m, ids, 0)  # same seed: the same dropout masks, drawn in the same order
    assert not any("forward" in mod.__dict__ for mod in m.modules())  # restored
    torch.testing.assert_close(out, ref_out, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_lean_forward_falls_back_when_meaning_differs(tiny):
    m = _model(tiny)
    m.eval()
    ids = torch.randint(5, 1000, (2, 9))
    with torch.no_grad():
        base = tiny.model(input_ids=ids).logits
        with fast_lora(m):
            with m.disable_adapter():  # disabled adapters: the base model exactly
                torch.testing.assert_close(m(input_ids=ids).logits, base)
            lean = m(input_ids=ids).logits
        assert not torch.allclose(lean, base)
        torch.testing.assert_close(lean, m(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    d = _model(tiny, use_dora=True)  # a variant: PEFT's own forward
    with torch.no_grad(), fast_lora(d):
        torch.testing.assert_close(d(input_ids=ids).logits, d.base_model(input_ids=ids).logits)
    half = _model(tiny)
    for n, p in half.named_parameters():
        if "lora_" not in n:
            p.data = p.data.bfloat16()
    with torch.no_grad():  # bf16 base + fp32 adapters: the lean path runs the update in bf16
        ref = half(input_ids=ids).logits
        with fast_lora(half):
            torch.testing.assert_close(half(input_ids=ids).logits, ref, atol=0.1, rtol=0.05)


def test_bf16_base_with_fp32_master_adapters(tiny):
    """Low-precision training: the base's format for every matmul, gradients in the fp32 master weights,
    equal to PEFT's own (fp32 update) forward up to bf16 rounding."""
    m = _model(tiny)
    for n, p in m.named_parameters():
        if "lora_" not in n:
            p.data = p.data.bfloat16()
    m.train()
    ids = torch.randint(5, 1000, (2, 13))
    ref_out, ref_grads = _run(m, ids, 0)
    with fast_lora(m):
        out, grads = _run(m, ids, 0)
    assert out.dtype == torch.bfloat16
    assert all(g.dtype == torch.float32 for g in grads)  # fp32 master weights receive fp32 gradients
    torch.testing.assert_close(out, ref_out, atol=0.1, rtol=0.05)
    for a, b in zip(grads, ref_grads):
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
        assert cos > 0.98, cos
