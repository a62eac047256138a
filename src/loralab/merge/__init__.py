"""`loralab merge`: combine adapters (or full models) by one of the delta methods.

    from loralab.merge import MergeConfig, merge
    card = merge(MergeConfig(parents=["runs/sport", "runs/medical"], method="ties", density=0.5, out="merged/"))

Adapters: every module's parent deltas `scale·B·A` are merged by `methods.merge_deltas`
and written back as LoRA factors at scale 1: `cat` stacks the factors (exact, rank Σr);
every other method factorises the merged delta by SVD at `rank` (default: Σr, which is
exact for linear; `svd` defaults to the largest parent rank, like PEFT) and the card
records the rank kept, the delta's exact (numeric) rank and the relative Frobenius error
of the truncation, per module and overall. `full=True` also writes OUT/full/: the base
with the exact (untruncated) merged delta added, as a safetensors model folder.

Full models (HF folders): every tensor is merged by the same functions, on `W_i − W_base`
when `base` is given (required by ties / dare / magnitude) and on `W_i` otherwise.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from .. import __version__
from ..config import StageConfig
from ..io import atomic_dir, claim_output
from . import folders as F
from . import methods as M
from .folders import MergeError
from .methods import METHODS, Params

__all__ = ["MergeConfig", "MergeError", "merge", "METHODS"]


class MergeConfig(StageConfig):
    """`loralab merge`: parents, one method and its parameters, an output folder."""

    parents: list[str] = Field(min_length=1, description="Adapter folders (or run folders), or HF model folders.")
    method: Literal["linear", "cat", "svd", "ties", "dare_linear", "dare_ties", "slerp", "magnitude"] = Field(
        "linear", description="How the parents' deltas combine (see loralab.merge.methods).")
    weights: list[float] | None = Field(None, description="One weight per parent; default 1/N each.")
    out: str = Field(description="Output folder: a PEFT adapter folder (or a model folder for model parents).")
    rank: int | None = Field(None, ge=1, description="Rank of the written adapter (not cat); default: linear Σ "
                             "parent ranks (exact), svd the largest parent rank, ties / magnitude / dare / slerp "
                             "per module the smallest rank within max_error (refused when that adapter would be "
                             "larger than the dense delta: then give --rank, or --full for the exact model).")
    max_error: float = Field(0.01, gt=0, lt=1, description="Default-rank merges: the relative Frobenius error "
                             "a module's factorisation may lose (0.01: the written adapter is the merge to 1 %).")
    threads: int | None = Field(None, ge=1, description="CPU threads for the SVDs; default: measured here (one "
                                "thread is often faster than all of them on a busy machine).")
    density: float = Field(1.0, gt=0, le=1, description="ties / magnitude: fraction of each delta kept by |value|.")
    drop: float | None = Field(None, ge=0, lt=1, description="dare: drop rate p (density = 1 − p); default 0.5.")
    sign: Literal["sum", "count"] = Field("sum", description="ties / dare_ties: elect the sign by the sum of "
                                          "weighted values or by the count of signs.")
    rescale: Literal["inverse", "l1", "none"] = Field(
        "inverse", description="dare: kept values / (1 − p) (the DARE paper, PEFT), or matched L1 norm (mergekit).")
    normalize: bool | None = Field(None, description="ties-family: divide by Σ w over agreeing parents "
                                   "(default: ties yes, dare_ties no, as mergekit).")
    t: float = Field(0.5, ge=0, le=1, description="slerp: position between the first (0) and second (1) parent.")
    seed: int = Field(0, description="dare: seed of the drop masks (per tensor and parent).")
    base: str | None = Field(None, description="Model parents: the base folder the deltas are taken from.")
    full: bool = Field(False, description="Adapter parents: also write OUT/full/, the base with the merge added.")
    model: str | None = Field(None, description="--full: base model spec (default: the parents' card).")
    dtype: Literal["float32", "bfloat16", "float16"] | None = Field(
        None, description="Dtype of the written tensors (default: the first parent's).")
    device: str = Field("cpu", description="Where the arithmetic runs: cpu | cuda[:N] | auto.")
    overwrite: bool = Field(False, description="Replace an existing output folder.")

    @model_validator(mode="after")
    def _check(self) -> "MergeConfig":
        problems = []
        if self.weights is not None and len(self.weights) != len(self.parents):
            problems.append(f"{len(self.weights)} weights for {len(self.parents)} parents")
        if self.method == "slerp" and len(self.parents) != 2:
            problems.append(f"slerp merges exactly two parents, got {len(self.parents)}")
        if self.drop is not None and not self.method.startswith("dare"):
            problems.append(f"drop is a dare parameter, not one of {self.method}")
        if self.method == "cat" and self.rank is not None:
            problems.append("cat keeps every parent's rank (Σr); rank applies to the other methods")
        if self.method == "slerp" and self.weights is not None:
            problems.append("slerp takes a position t between its two parents, not weights")
        if self.method == "slerp" and self.base:
            problems.append("slerp interpolates the two models' full weights, as mergekit's SLERP does (its "
                            "base_model is the first endpoint); --base would interpolate W_i − W_base instead, "
                            "another merge: drop --base")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def params(self) -> Params:
        density = (1 - (0.5 if self.drop is None else self.drop)) if self.method.startswith("dare") else self.density
        return Params(density=density, sign=self.sign, rescale=self.rescale, normalize=self.normalize,
                      t=self.t, seed=self.seed)

    def resolved_weights(self) -> list[float]:
        return list(self.weights) if self.weights is not None else [1 / len(self.parents)] * len(self.parents)


def _device(spec: str) -> torch.device:
    from .. import device as devpolicy

    return devpolicy.resolve(spec).device


def _check_bases(cards: list[dict | None], paths: list[str]) -> dict | None:
    """The parents' common base (from their cards); refuse parents trained on different bases."""
    seen = [((c or {}).get("base") or {}, p) for c, p in zip(cards, paths)]
    fps = {b.get("fingerprint") for b, _ in seen if b.get("fingerprint")}
    if len(fps) > 1:
        lines = [f"{p}: base {b.get('spec')!r} fingerprint {b.get('fingerprint')}" for b, p in seen]
        raise MergeError("parents come from different base models:\n  " + "\n  ".join(lines))
    return next((b for b, _ in seen if b.get("fingerprint")), None)


def _card(cfg: MergeConfig, kind: str, base: dict | None, parents: list[dict | None], extra: dict) -> dict:
    doms = [c.get("domain") for c in parents if c and c.get("domain")]
    vocab = {c.get("vocab_size") for c in parents if c and c.get("vocab_size")}
    return {
        "kind": kind, "method": "merge", "base": base, "domain": "+".join(doms) if doms else None,
        "trigger": None, "vocab_size": vocab.pop() if len(vocab) == 1 else None,
        "merge": {"method": cfg.method, "parents": [
            {"path": str(F.resolve_folder(p)), "domain": (c or {}).get("domain"),
             "data_digest": ((c or {}).get("data") or {}).get("digest")} for p, c in zip(cfg.parents, parents)],
            "weights": None if cfg.method == "slerp" else cfg.resolved_weights(), "params": _param_view(cfg),
            **extra},
        "config": cfg.dump(), "loralab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def _param_view(cfg: MergeConfig) -> dict[str, Any]:
    p = cfg.params()
    keep = {"ties": ("density", "sign", "normalize"), "magnitude": ("density",), "slerp": ("t",),
            "dare_linear": ("density", "rescale", "seed", "normalize"),
            "dare_ties": ("density", "sign", "rescale", "seed", "normalize")}.get(cfg.method, ())
    out = {k: getattr(p, k) for k in keep}
    if "normalize" in out and out["normalize"] is None:
        out["normalize"] = M.default_normalize(cfg.method)
    return out


def merge(cfg: MergeConfig) -> dict[str, Any]:
    """Merge `cfg.parents` into `cfg.out`; returns the card written there."""
    out = Path(cfg.out)
    kinds = {F.kind_of(p) for p in cfg.parents}
    if len(kinds) > 1:
        raise MergeError("parents mix adapter folders and model folders; merge one kind at a time")
    with claim_output(out, overwrite=cfg.overwrite), _threads(cfg) as used:
        card = _merge_models(cfg, out) if kinds == {"model"} else _merge_adapters(cfg, out, used)
    return card


class _threads:
    """The CPU threads the merge's SVDs run on: `cfg.threads`, else the faster of one thread and
    all of them, timed here on one SVD of a model-sized matrix (on a busy two-core machine one
    thread was 20-30x faster: 57 s against 1,076-1,915 s for a TIES merge). Restored after."""

    def __init__(self, cfg: MergeConfig):
        self.cfg, self.before = cfg, torch.get_num_threads()

    def __enter__(self) -> dict:
        dev = _device(self.cfg.device)
        if dev.type != "cpu":
            return {"device": str(dev)}
        if self.cfg.threads:
            torch.set_num_threads(self.cfg.threads)
            return {"threads": self.cfg.threads, "chosen": "given"}
        timed = {n: _svd_seconds(n) for n in sorted({1, self.before})}
        best = min(timed, key=timed.get)
        torch.set_num_threads(best)
        return {"threads": best, "chosen": "measured", "svd_seconds": {str(k): round(v, 4) for k, v in timed.items()}}

    def __exit__(self, *exc) -> None:
        torch.set_num_threads(self.before)


def _svd_seconds(threads: int, n: int = 576, reps: int = 2) -> float:
    """Best of `reps` timings of one (n, n) fp32 SVD on `threads` threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x = torch.randn(n, n, generator=torch.Generator().manual_seed(0))
        best = float("inf")
        for _ in range(reps):
            t0 = time.perf_counter()
            torch.linalg.svd(x, full_matrices=False)
            best = min(best, time.perf_counter() - t0)
        return best
    finally:
        torch.set_num_threads(before)


# ------------------------------------------------------------------ adapters

def _merge_adapters(cfg: MergeConfig, out: Path, threads: dict | None = None) -> dict[str, Any]:
    if cfg.base:
        raise MergeError("--base is for model parents; adapters carry their base in their card (--model for --full)")
    parents = [F.read_adapter(p) for p in cfg.parents]
    base = _check_bases([p.card for p in parents], cfg.parents)
    weights, params, dev = cfg.resolved_weights(), cfg.params(), _device(cfg.device)
    dtype = getattr(torch, cfg.dtype) if cfg.dtype else next(iter(parents[0].modules.values())).A.dtype
    # ties / magnitude / dare / slerp make a full-rank delta: by default each module keeps the rank
    # that holds it within max_error (--full: the exact model is written, the adapter keeps Σr)
    adaptive = cfg.rank is None and cfg.method in M.FULL_RANK and not cfg.full
    rank = cfg.rank or (max(p.rank for p in parents) if cfg.method == "svd" else
                        None if adaptive else sum(p.rank for p in parents))
    names = list(dict.fromkeys(n for p in parents for n in p.modules))
    shapes = {}
    for n in names:
        s = {(tuple(p.modules[n].B.shape[:1]), tuple(p.modules[n].A.shape[1:])) for p in parents if n in p.modules}
        if len(s) > 1:
            raise MergeError(f"module {n} has different shapes in different parents: {sorted(s)}")
        shapes[n] = s.pop()
    factors, deltas, per_module = {}, {}, {}
    for n in names:
        A, B, d, info = _merge_module(cfg, n, parents, weights, params, rank, shapes[n], dev)
        factors[n] = (A, B)
        if info is not None:
            per_module[n] = info
        if cfg.full:
            deltas[n] = d.cpu()
    extra = {"rank": max(a.shape[0] for a, _ in factors.values()), "threads": threads}
    if per_module:
        total = sum(v["norm"] ** 2 for v in per_module.values()) ** 0.5
        err = sum((v["rel_error"] * v["norm"]) ** 2 for v in per_module.values()) ** 0.5
        extra["svd"] = {"rank": extra["rank"], "rank_rule": f"smallest within {cfg.max_error:g}" if adaptive
                        else "given" if cfg.rank else "default", "rel_error": err / total if total else 0.0,
                        "max_rel_error": max(v["rel_error"] for v in per_module.values()),
                        "max_numeric_rank": max(v["numeric_rank"] for v in per_module.values()),
                        "modules": per_module}
    card = _card(cfg, "adapter", base, [p.card for p in parents], extra)
    with atomic_dir(out) as tmp:
        F.write_adapter(tmp, parents, factors, card, dtype)
        if cfg.full:
            _write_full(cfg, tmp / "full", deltas, base, card)
    return card


def _merge_module(cfg: MergeConfig, n: str, parents: list[F.AdapterParent], weights: list[float], params: Params,
                  rank: int, shape: tuple, dev: torch.device):
    """(A, B, exact merged delta or None, truncation info or None) of one module."""
    present = [(p.modules[n], w) for p, w in zip(parents, weights) if n in p.modules]
    d = None
    if cfg.method in ("cat", "linear", "svd"):  # a weighted sum of low-rank deltas: exact in factor space
        A, B = M.cat_factors([f.A.to(dev) for f, _ in present], [f.B.to(dev) for f, _ in present],
                             [w * f.scale for f, w in present])
        _finite(A, n)
        _finite(B, n)
        if cfg.full:
            d = B @ A
        if cfg.method == "cat":
            return A, B, d, None
        lr = M.low_rank_product(B, A, rank)
    else:
        (out_dim,), (in_dim,) = shape
        ds = [p.modules[n].delta().to(dev) if n in p.modules else torch.zeros(out_dim, in_dim, device=dev)
              for p in parents]
        d = M.merge_deltas(cfg.method, ds, weights, params, name=n)
        _finite(d, n)
        lr = M.low_rank(d, rank, cfg.max_error)
        if rank is None and lr.rank * (out_dim + in_dim) >= out_dim * in_dim:
            at = M.low_rank(d, sum(p.rank for p in parents))
            raise MergeError(
                f"{cfg.method}: keeping the merge within {cfg.max_error:.0%} needs rank {lr.rank} of "
                f"{min(out_dim, in_dim)} in {n}, an adapter larger than the dense delta (at the parents' rank "
                f"sum {at.rank} this module loses {at.rel_error:.0%}). Write the exact merged model with --full, "
                "or accept a truncation with --rank R (the card and the output print the error it loses)")
    info = {"rank": lr.rank, "numeric_rank": lr.numeric_rank, "rel_error": lr.rel_error, "norm": lr.norm}
    return lr.A, lr.B, d, info


def _finite(x: torch.Tensor, name: str) -> None:
    if not M.finite(x):
        raise MergeError(f"the merge gives non-finite values in {name} (inf or nan in a parent, or weights "
                         "too large); nothing was written")


def _write_full(cfg: MergeConfig, folder: Path, deltas: dict[str, torch.Tensor], base: dict | None, card: dict):
    """The base model with every exact merged delta added (W + ΔW), as a model folder."""
    from .. import models
    from ..adapters import save_full_model

    spec = cfg.model or (base or {}).get("path") or (base or {}).get("spec")
    if not spec:
        raise MergeError("--full needs the base model: the parents' cards name none, pass --model")
    loaded = models.load(spec, device="cpu", dtype="float32")
    if base and base.get("fingerprint") and loaded.fingerprint != base["fingerprint"]:
        raise MergeError(f"--full: model {spec!r} has fingerprint {loaded.fingerprint}, the parents' base "
                         f"{base['fingerprint']}")
    mods = dict(loaded.model.named_modules())
    with torch.no_grad():
        for n, d in deltas.items():
            name = n.removeprefix("base_model.model.")
            if name not in mods:
                raise MergeError(f"--full: the base has no module {name}")
            w = mods[name].weight
            w.add_(d.to(w.device, w.dtype))
    folder.mkdir()
    save_full_model(loaded.model, folder, tokenizer=loaded.tokenizer,
                    card={**card, "kind": "model", "merge": {**card["merge"], "truncated": False}})


# ------------------------------------------------------------------ models

def _merge_models(cfg: MergeConfig, out: Path) -> dict[str, Any]:
    if cfg.method in M.NEEDS_BASE and not cfg.base:
        raise MergeError(f"{cfg.method} on full models merges W_i − W_base: pass --base BASE_FOLDER")
    if cfg.method in ("cat", "svd"):
        raise MergeError(f"{cfg.method} is about LoRA factors; for full models use linear")
    if cfg.full:
        raise MergeError("--full is for adapter parents (model parents already give a model folder)")
    folders = [F.resolve_folder(p) for p in cfg.parents]
    cards = [F.load_card(f) for f in folders]
    base = _check_bases(cards, cfg.parents)
    src = folders + ([F.resolve_folder(cfg.base)] if cfg.base else [])
    weights, params, dev = cfg.resolved_weights(), cfg.params(), _device(cfg.device)
    merged = {}
    for name, ts in F.iter_model_tensors(src):
        if not ts[0].is_floating_point():
            merged[name] = ts[0]
            continue
        ts = [t.to(dev) for t in ts]
        ref = ts[-1].float() if cfg.base else None
        ds = [t.float() - ref for t in ts[:-1]] if cfg.base else ts
        d = M.merge_deltas(cfg.method, ds, weights, params, name=name)
        w = (ref + d) if cfg.base else d
        _finite(w, name)
        merged[name] = w.to(getattr(torch, cfg.dtype) if cfg.dtype else ts[0].dtype)
    card = _card(cfg, "model", base, cards, {"base_folder": str(cfg.base) if cfg.base else None})
    with atomic_dir(out) as tmp:
        F.write_model(tmp, merged, folders[0], card)
    return card
