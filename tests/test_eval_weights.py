"""ΔW diagnostics: exact identities against PEFT's own modules and planted intruders."""

from __future__ import annotations

import pytest
import torch

from loralab.evaluate import weights as Wd

from test_eval_helpers import peft_copy


@pytest.mark.parametrize("rslora", [False, True])
def test_delta_from_file_equals_hand_made_sBA(tiny, tmp_path, rslora):
    pm = peft_copy(tiny, r=4, alpha=16, init=False, rslora=rslora)  # random A and B
    pm.save_pretrained(tmp_path)
    factors = Wd.lora_factors(tmp_path)
    assert len(factors) == 2 * 5  # 2 layers x 5 target modules
    for mod, (A, B, s) in factors.items():
        layer = pm.get_base_model().get_submodule(mod)
        want_s = 16 / (4 ** 0.5) if rslora else 16 / 4
        assert s == layer.scaling["default"] == want_s
        hand = want_s * (layer.lora_B["default"].weight @ layer.lora_A["default"].weight)
        assert torch.equal(Wd.delta_weight(A, B, s), hand)
        # the spectrum from the QR core equals a full SVD of ΔW
        torch.testing.assert_close(Wd.delta_spectrum(A, B, s), torch.linalg.svdvals(hand)[:4], atol=1e-5, rtol=1e-5)
    merged = pm.merge_and_unload()  # W + ΔW as PEFT merges it
    for mod, (A, B, s) in factors.items():
        base = tiny.model.get_submodule(mod).weight
        torch.testing.assert_close(base + Wd.delta_weight(A, B, s), merged.get_submodule(mod).weight)


def test_diagnostics_rows_and_zero_adapter(tiny, tmp_path):
    pm = peft_copy(tiny, init=True)  # B = 0: no change at all
    pm.save_pretrained(tmp_path)
    d = Wd.diagnostics(tmp_path, tiny.model, intruder_top_k=5)
    assert d["summary"]["modules"] == 10
    assert d["summary"]["total_norm"] == 0.0
    assert d["summary"]["intruders"] == 0
    assert [r["module"] for r in d["layers"]][:5] == sorted(r["module"] for r in d["layers"][:5])


def test_planted_intruder_is_detected():
    g = torch.Generator().manual_seed(0)
    n = 64
    U, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    V, _ = torch.linalg.qr(torch.randn(n, n, generator=g))
    W = U @ torch.diag(torch.linspace(3.0, 0.1, n)) @ V.T
    u = torch.randn(n, generator=g)
    u /= u.norm()  # a direction spread over all of W's singular vectors: max |cos| ~ 0.4
    v = torch.randn(n, generator=g)
    v /= v.norm()
    planted = Wd.intruders(W, W + 10.0 * torch.outer(u, v), top_k=5)
    assert planted["count"] >= 1 and 0 in planted["ranks"]  # it becomes the top direction
    known_U = torch.linalg.svd(W, full_matrices=False).U  # the cache path gives the same answer
    assert Wd.intruders(W, W + 10.0 * torch.outer(u, v), top_k=5, U=known_U) == planted
    # a stronger copy of an existing direction is not an intruder
    aligned = Wd.intruders(W, W + 5.0 * torch.outer(U[:, 3], V[:, 3]), top_k=5)
    assert aligned["count"] == 0


def test_spectral_stats():
    s = Wd.spectral_stats(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    assert s["erank"] == pytest.approx(4.0) and s["rank90"] == 4
    s = Wd.spectral_stats(torch.tensor([10.0, 0.1, 0.1]))
    assert s["rank90"] == 1 and 1.0 < s["erank"] < 1.2
