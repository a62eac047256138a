"""Weight diagnostics of a LoRA adapter, from its files and the base weights alone.

For every adapted linear layer W (out, in) with factors A (r, in), B (out, r):
  ΔW = s · B A,  s = alpha / r  (alpha / sqrt(r) with rsLoRA), read from adapter_config.json
  norm        ‖ΔW‖_F and relative size ‖ΔW‖_F / ‖W‖_F
  erank       entropy effective rank exp(H(σ / Σσ)) of ΔW's singular values (Roy & Vetterli)
  rank90      number of singular values holding 90 % of ‖ΔW‖_F² (spectral energy)
  intruders   among the top-k left singular vectors of W + ΔW, those whose largest |cosine|
              with any left singular vector of W is below a threshold ("LoRA vs Full
              Fine-tuning: An Illusion of Equivalence", Shuttleworth et al. 2024)
ΔW's spectrum comes from the (r, r) core of QR(B)·(R_B R_Aᵀ)·QR(Aᵀ)ᵀ, never a full SVD.
DoRA adapters (W' = m ⊙ (W + s·BA) / ‖W + s·BA‖) and fully fine-tuned models have a dense
ΔW = W' − W: the same rows come from a full SVD of it (`dense_diagnostics`).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import torch

from ..io import read_json


def adapter_scale(cfg: dict, module: str, r: int) -> float:
    """s for one module: alpha (or its alpha_pattern override) over r, or over sqrt(r) for rsLoRA."""
    alpha = cfg.get("lora_alpha", 8)
    for pat, a in (cfg.get("alpha_pattern") or {}).items():
        if re.search(rf"(^|\.){pat}$", module):
            alpha = a
    return alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r


def lora_factors(folder: str | Path) -> dict[str, tuple[torch.Tensor, torch.Tensor, float]]:
    """{module path in the base model: (A (r, in), B (out, r), s)} read from the adapter files."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_json(folder / "adapter_config.json")
    if cfg.get("use_dora"):
        raise ValueError(f"{folder}: DoRA adapters rescale W; ΔW = s·BA does not describe them")
    sd = load_file(str(folder / "adapter_model.safetensors"))
    out = {}
    for k, a in sd.items():
        if not k.endswith("lora_A.weight"):
            continue
        mod = k[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        b = sd[k.replace("lora_A.weight", "lora_B.weight")]
        A, B = a.float(), b.float()  # (r, in), (out, r)
        if cfg.get("fan_in_fan_out"):  # Conv1D-style layers store W transposed
            A, B = B.T, A.T
        out[mod] = (A, B, adapter_scale(cfg, mod, A.shape[0]))
    return out


def delta_weight(A: torch.Tensor, B: torch.Tensor, s: float) -> torch.Tensor:
    """(out, in) ΔW = s · B A."""
    return s * (B @ A)


def delta_spectrum(A: torch.Tensor, B: torch.Tensor, s: float) -> torch.Tensor:
    """Singular values of s·BA, (r,), from QR factors: cost O((out + in) r²)."""
    qb, rb = torch.linalg.qr(B.double())  # (out, r), (r, r)
    qa, ra = torch.linalg.qr(A.double().T)  # (in, r), (r, r)
    return torch.linalg.svdvals(s * rb @ ra.T).float()


def spectral_stats(sv: torch.Tensor) -> dict:
    """Entropy effective rank and the rank holding 90 % of the energy, from singular values."""
    sv = sv[sv > 1e-12 * max(float(sv.max()), 1e-30)] if sv.numel() else sv
    if sv.numel() == 0:
        return {"erank": 0.0, "rank90": 0, "top_sv": 0.0}
    p = sv / sv.sum()
    erank = float(torch.exp(-(p * p.log()).sum()))
    energy = torch.cumsum(sv.double() ** 2, 0) / (sv.double() ** 2).sum()
    return {"erank": erank, "rank90": int((energy < 0.9).sum()) + 1, "top_sv": float(sv[0])}


def intruders(W: torch.Tensor, W_new: torch.Tensor, *, top_k: int = 10, threshold: float = 0.5,
              U: torch.Tensor | None = None) -> dict:
    """Top-k singular directions of W_new that no singular direction of W resembles.

    `U` (out, min) are W's left singular vectors when already known (shared by adapters).
    """
    if U is None:
        U = torch.linalg.svd(W.float(), full_matrices=False).U  # (out, min)
    Un = torch.linalg.svd(W_new.float(), full_matrices=False).U[:, :top_k]  # (out, k)
    sim = (Un.T @ U).abs().max(dim=1).values  # (k,) best |cos| per new direction
    idx = [int(i) for i in torch.nonzero(sim < threshold).flatten()]
    return {"count": len(idx), "ranks": idx, "min_similarity": float(sim.min())}


def _base_weight(model, module: str) -> torch.Tensor:
    from ..adapters import peft_model

    pm = peft_model(model)
    root = pm.get_base_model() if pm is not None else model
    m = root.get_submodule(module)
    m = getattr(m, "base_layer", m)  # PEFT-wrapped layers keep W in base_layer
    return m.weight.detach().float().cpu()


def diagnostics(folder: str | Path, model, *, intruder_top_k: int = 10, threshold: float = 0.5,
                intruders_on: bool = True, svd_cache: dict | None = None) -> dict:
    """Per-layer and aggregate ΔW diagnostics of the adapter in `folder` against `model`'s W.

    `svd_cache` keeps W's left singular vectors per module across calls (several adapters
    on one base pay for W's SVDs once).
    """
    svd_cache = {} if svd_cache is None else svd_cache
    if read_json(Path(folder) / "adapter_config.json").get("use_dora"):  # W is rescaled: ΔW is dense
        return dense_diagnostics(dora_deltas(folder, model), model, intruder_top_k=intruder_top_k,
                                 threshold=threshold, intruders_on=intruders_on, svd_cache=svd_cache)
    kw = dict(intruder_top_k=intruder_top_k, threshold=threshold, intruders_on=intruders_on, svd_cache=svd_cache)
    rows = [_row(mod, _base_weight(model, mod), delta_weight(A, B, s), int(A.shape[0]), s, delta_spectrum(A, B, s),
                 **kw) for mod, (A, B, s) in sorted(lora_factors(folder).items(), key=lambda kv: _order(kv[0]))]
    return {"layers": rows, "summary": summarize(rows)}


def _row(mod: str, W: torch.Tensor, dW: torch.Tensor, rank: int, scale: float, sv: torch.Tensor, *,
         intruder_top_k: int, threshold: float, intruders_on: bool, svd_cache: dict) -> dict:
    """One module's diagnostics from its base weight, its ΔW and ΔW's singular values."""
    fro, wfro = float(dW.norm()), float(W.norm())
    row = {"module": mod, "rank": rank, "scale": scale, "norm": fro,
           "rel_norm": fro / wfro if wfro else float("nan"), **spectral_stats(sv)}
    if intruders_on:
        if mod not in svd_cache:
            svd_cache[mod] = torch.linalg.svd(W, full_matrices=False).U
        row["intruders"] = intruders(W, W + dW, top_k=intruder_top_k, threshold=threshold,
                                     U=svd_cache[mod])["count"]
    return row


def _order(mod: str) -> tuple:
    m = re.search(r"layers\.(\d+)\.", mod)
    return (int(m.group(1)) if m else -1, mod)


def summarize(rows: list[dict]) -> dict:
    """Totals and per-module-type means (q_proj, v_proj, ...)."""
    if not rows:
        return {"modules": 0}
    rel = np.array([r["rel_norm"] for r in rows])
    by_type: dict[str, list[dict]] = {}
    for r in rows:
        by_type.setdefault(r["module"].rsplit(".", 1)[-1], []).append(r)
    out = {
        "modules": len(rows),
        "total_norm": float(math.sqrt(sum(r["norm"] ** 2 for r in rows))),
        "mean_rel_norm": float(rel.mean()), "max_rel_norm": float(rel.max()),
        "max_rel_module": rows[int(rel.argmax())]["module"],
        "mean_erank": float(np.mean([r["erank"] for r in rows])),
        "by_type": {t: {"mean_rel_norm": float(np.mean([r["rel_norm"] for r in rs])),
                        "mean_erank": float(np.mean([r["erank"] for r in rs]))} for t, rs in by_type.items()},
    }
    if "intruders" in rows[0]:
        out["intruders"] = int(sum(r["intruders"] for r in rows))
    return out


# ----------------------------------------------------------------- dense ΔW (DoRA, full fine-tuning)

def dora_deltas(folder: str | Path, model) -> dict[str, torch.Tensor]:
    """{module: ΔW (out, in)} of a DoRA adapter: W' − W with W' = m ⊙ (W + s·BA) / ‖W + s·BA‖
    (norms per output row, PEFT's DoRA for linear layers), m the trained magnitude vector."""
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = read_json(folder / "adapter_config.json")
    sd = load_file(str(folder / "adapter_model.safetensors"))
    mags = {k.split(".lora_magnitude_vector")[0].removeprefix("base_model.model."): v.float()
            for k, v in sd.items() if ".lora_magnitude_vector" in k}
    out = {}
    for k, a in sd.items():
        if not k.endswith("lora_A.weight"):
            continue
        mod = k[: -len(".lora_A.weight")].removeprefix("base_model.model.")
        A, B = a.float(), sd[k.replace("lora_A.weight", "lora_B.weight")].float()
        W = _base_weight(model, mod)
        V = W + adapter_scale(cfg, mod, A.shape[0]) * (B @ A)
        m = mags.get(mod)
        if m is None:
            raise ValueError(f"{folder}: DoRA module {mod} has no magnitude vector")
        out[mod] = (m.reshape(-1) / V.norm(dim=1)).unsqueeze(1) * V - W
    return out


def model_deltas(base, tuned) -> dict[str, torch.Tensor]:
    """{module: W_tuned − W_base} for every linear layer inside the decoder's blocks."""
    out = {}
    tuned_mods = dict(tuned.named_modules())
    for name, m in base.named_modules():
        if isinstance(m, torch.nn.Linear) and ".layers." in f".{name}" and name in tuned_mods:
            out[name] = tuned_mods[name].weight.detach().float().cpu() - m.weight.detach().float().cpu()
    return out


def dense_diagnostics(deltas: dict[str, torch.Tensor], model, *, intruder_top_k: int = 10, threshold: float = 0.5,
                      intruders_on: bool = True, svd_cache: dict | None = None) -> dict:
    """The same rows and summary as `diagnostics`, from dense ΔW matrices (a full SVD each)."""
    kw = dict(intruder_top_k=intruder_top_k, threshold=threshold, intruders_on=intruders_on,
              svd_cache={} if svd_cache is None else svd_cache)
    rows = [_row(mod, _base_weight(model, mod), dW, int(min(dW.shape)), 1.0, torch.linalg.svdvals(dW), **kw)
            for mod, dW in sorted(deltas.items(), key=lambda kv: _order(kv[0]))]
    return {"layers": rows, "summary": summarize(rows), "dense": True}
