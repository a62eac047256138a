"""A run's data: packaged/raw sources -> held-out documents + a prepared training folder.

Every step writes a records folder under `<study>/data/<step>-<digest>/`, where the
digest covers the whole chain of steps up to it, so runs that share a prefix of steps
(the same ingest, the same structuring) reuse it, and a folder that exists is complete
(atomic writes) and never recomputed.

Order (`steps(d)`, shown by `loralab study --dry-run`): ingest -> split documents
(held-out / train pool) -> corrupt -> clean -> structure -> distill -> score (always:
IFD / perplexity distributions for the report) -> select. Noise is injected before
cleaning, so a "noisy, cleaned" variant is cleaned of that noise; the order is part
of every folder's digest. Held-out documents are the same for every run of a study
that shares the ingest and the seed: in-domain gain is measured on them as raw text
and as Q&A made by one fixed procedure (`heldout_qa`, template cloze by default), so a
run's numbers depend on its own config only, never on the runs it is grouped with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from ..data.records import read_records, write_records
from ..data.split import doc_key, eval_docs
from ..io import write_json
from .spec import DataSpec, digest


def _cached(root: Path, step: str, key: Any, make: Callable[[Path], Any]) -> Path:
    out = root / f"{step}-{digest(key)}"
    if not (out / "records.jsonl").exists():
        make(out)
    return out


def holdout(src: Path, out_train: Path, out_eval: Path, frac: float, seed: int) -> dict:
    """Split a records folder by document into train pool and held-out folders (each side gets at
    least one document when there are two or more; `split.eval_docs`)."""
    recs = list(read_records(src))
    ev = eval_docs((doc_key(r) for r in recs), frac, seed)
    train, held = [], []
    for r in recs:
        (held if doc_key(r) in ev else train).append(r)
    for folder, recs in ((out_train, train), (out_eval, held)):
        folder.mkdir(parents=True, exist_ok=True)
        write_records(folder, recs)
        write_json(folder / "data_card.json", {
            "stage": "holdout", "input": str(src), "eval_docs": frac, "seed": seed,
            "counts": {"records": len(recs), "docs": len({doc_key(r) for r in recs})},
            "split": {"held_out": folder is out_eval, "train_records": len(train), "held_out_records": len(held)},
        })
    return {"train": len(train), "held_out": len(held)}


def steps(d: DataSpec) -> list[str]:
    """The run's data steps in the order `prepare` applies them."""
    out = ["ingest", "holdout"]
    out += ["corrupt"] if d.corrupt > 0 else []
    out += ["clean"] if d.clean is not None else []
    out += ["structure"] if d.structure is not None else []
    out += ["distill"] if d.distill is not None else []
    out += ["score"] + (["select"] if d.select else [])
    return out


def held_out(d: DataSpec, seed: int, root: Path, progress: bool = True) -> tuple[dict[str, Path], list[Any]]:
    """The first two steps alone (ingest, split by document): ({ingest, pool, heldout_raw}, digest key)."""
    from ..data.ingest import IngestConfig, ingest

    root.mkdir(parents=True, exist_ok=True)
    key: list[Any] = [{"sources": d.sources, "domain": d.domain, "limit": d.limit, "chunk": d.chunk_tokens}]
    src = _cached(root, "ingest", key, lambda o: ingest(
        d.sources, o, IngestConfig(domain=d.domain, limit=d.limit, chunk_tokens=d.chunk_tokens, seed=seed,
                                   progress=progress)))
    key.append({"holdout": d.eval_docs, "seed": seed})
    pool = root / f"pool-{digest(key)}"
    held = root / f"heldout-{digest(key)}"
    if not (held / "records.jsonl").exists() or not (pool / "records.jsonl").exists():
        holdout(src, pool, held, d.eval_docs, seed)
    return {"ingest": src, "pool": pool, "heldout_raw": held}, key


def prepare(d: DataSpec, model: str, seed: int, root: Path, loaded=None, progress: bool = True) -> dict[str, Path]:
    """Build (or reuse) every step of `d`; returns the folders a run needs."""
    out, key = held_out(d, seed, root, progress)
    held = out["heldout_raw"]
    if d.heldout_qa is not None:
        from ..data.structure import StructureConfig, structure

        qcfg = {"model": model, **d.heldout_qa, "progress": False}
        out["heldout_qa"] = _cached(root, "heldout-qa", [key[:2], qcfg],
                                    lambda o: structure(held, o, StructureConfig(**qcfg)))
    cur = out["pool"]
    if d.corrupt > 0:
        from ..data.corrupt import CorruptConfig, corrupt

        key.append({"corrupt": d.corrupt, "seed": seed})
        cur = _cached(root, "corrupt", key, lambda o, c=cur: corrupt(c, o, CorruptConfig(rate=d.corrupt, seed=seed)))
    if d.clean is not None:
        from ..data.clean import CleanConfig, clean

        key.append({"clean": d.clean})
        cur = _cached(root, "clean", key, lambda o, c=cur: clean(c, o, CleanConfig(**d.clean)))
    if d.structure is not None:
        from ..data.structure import StructureConfig, structure

        scfg = {"model": model, **d.structure}
        key.append({"structure": scfg})
        cur = _cached(root, "structure", key, lambda o, c=cur: structure(c, o, StructureConfig(**scfg)))
    if d.distill is not None:
        from ..data.distill import DistillConfig, distill

        dcfg = {"model": model, **d.distill}
        key.append({"distill": dcfg})
        cur = _cached(root, "distill", key, lambda o, c=cur: distill(c, o, DistillConfig(**dcfg), loaded=loaded))
    from ..device import resolve_device
    from ..score import ScoreConfig, score

    # scores depend on the scorer, the precision (the study scores exactly: fp32) and the device
    scorer = d.scorer or model
    key.append({"score": scorer, "precision": "exact", "device": resolve_device("auto").type})
    cur = _cached(root, "score", key, lambda o, c=cur: score(c, o, ScoreConfig(model=scorer, progress=progress),
                                                             loaded=loaded if scorer == model else None))
    out["scored"] = cur
    if d.select:
        from ..select import SelectConfig, select

        key.append({"select": d.select, "seed": seed})
        cur = _cached(root, "select", key, lambda o, c=cur: select(c, o, SelectConfig(policies=d.select, seed=seed)))
    out["train"] = cur
    return out
