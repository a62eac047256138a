"""`loralab rag eval SPEC.yaml`: the LoRA + RAG study, end to end, cached step by step.

    loralab rag eval studies/rag.yaml                 # → runs/rag/results.json + table.md

Steps (each skipped when its output exists, so a re-run resumes):
  1. ingest the domain corpus (e.g. olmo:drop-nfl: one document per NFL game)
  2. hold out a seeded share of documents (games), split by document
  3. structure the rest (template cloze Q&A, as the quickstart's `qa` variant) and train
     the adapter on it
  4. index every game's text (training and held-out games: the facts of a held-out game are
     in the documents, never in the weights)
  5. answer questions about the held-out games four ways (evaluate.rag.four_way), with
     contamination on foreign prompts, and write results.json, table.md and the finding.

A study run measures the same four conditions with `eval: {rag: {...}}` (`RunRag`, run by
study/evaluation.py); this spec is the stand-alone form, whose data and training sections
take the same fields as a study's. For an adapter trained
elsewhere, `eval_adapter` (behind `loralab eval --adapter A --rag INDEX`) runs step 5 alone
on the documents of INDEX that the adapter's card says it never trained on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import UserError
from .io import atomic_open, write_json


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RagData(_Strict):
    source: str = Field("olmo:drop-nfl", description="Corpus to ingest (one document per game).")
    domain: str = "sport"
    limit: int | None = Field(60, description="Documents read.")
    chunk_tokens: int = 192
    eval_docs: float = Field(0.2, gt=0, lt=1, description="Share of documents held out (by document).")
    structure: dict[str, Any] | None = Field(default_factory=lambda: {"mode": "template", "tasks": ["cloze"]})


class RagIndex(_Strict):
    chunk: int = Field(120, description="Words per chunk.")
    overlap: int = 20
    k: int = Field(3, ge=1, description="Passages per question.")


class RagEval(_Strict):
    questions: Literal["drop"] = Field("drop", description="Question source: DROP questions about the games.")
    limit: int | None = Field(60, description="Held-out questions (seeded subset).")
    game_hint: bool = Field(True, description="Open each question with its game's first sentence (DROP "
                            "questions rarely say which game they ask about).")
    max_new_tokens: int = 16
    foreign: str = Field("medical", description="Packaged domain whose prompts measure contamination.")
    prompts: int = Field(20, description="Foreign prompts.")


class RunRag(_Strict):
    """A study run's `eval.rag`: LoRA + RAG measured for that run's adapter (see study/evaluation.py)."""

    k: int = Field(2, ge=1, description="Passages per question.")
    chunk: int = Field(80, ge=8, description="Words per indexed passage.")
    overlap: int = Field(20, ge=0, description="Words shared by neighbouring passages.")
    limit: int | None = Field(16, ge=1, description="Questions about the held-out documents (seeded subset).")
    game_hint: bool = True
    max_new_tokens: int = Field(8, ge=1)
    foreign: str = "medical"
    prompts: int = Field(4, ge=0, description="Foreign prompts for contamination under each condition.")


class RagSpec(_Strict):
    name: str = "rag"
    description: str = ""
    model: str = "smollm2-135m"
    seed: int = 0
    out: str = "runs/rag"
    data: RagData = Field(default_factory=RagData)
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields (not model/data/out).")
    index: RagIndex = Field(default_factory=RagIndex)
    eval: RagEval = Field(default_factory=RagEval)


def load_spec(path: str | Path, out: str | None = None, limit: int | None = None) -> RagSpec:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"spec {p}: no such file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
        spec = RagSpec.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as e:
        raise UserError(f"spec {p}: {str(e).splitlines()[0]} ({e.__class__.__name__})") from None
    bad = {"model", "data", "out"} & set(spec.train)
    if bad:
        raise UserError(f"spec {p}: train sets {', '.join(sorted(bad))}; they come from the spec itself")
    if out:
        spec.out = out
    if limit:
        spec.eval.limit = limit
    return spec


def prepare(spec: RagSpec, progress: bool = True) -> dict[str, Path]:
    """Ingest, hold out, structure, train, index: the folders the evaluation needs."""
    from .config import TrainConfig
    from .data.ingest import IngestConfig, ingest
    from .data.structure import StructureConfig, structure
    from .rag import build_index
    from .study.data import holdout
    from .train import train

    root, d = Path(spec.out), spec.data
    f = {"ingest": root / "data" / "ingest", "pool": root / "data" / "pool", "held": root / "data" / "heldout",
         "qa": root / "data" / "train", "run": root / "adapter-run", "index": root / "index"}
    if not (f["ingest"] / "records.jsonl").exists():
        ingest([d.source], f["ingest"], IngestConfig(domain=d.domain, limit=d.limit, chunk_tokens=d.chunk_tokens,
                                                      seed=spec.seed, progress=progress))
    if not (f["held"] / "records.jsonl").exists():
        holdout(f["ingest"], f["pool"], f["held"], d.eval_docs, spec.seed)
    train_data = f["pool"]
    if d.structure is not None:
        if not (f["qa"] / "records.jsonl").exists():
            structure(f["pool"], f["qa"], StructureConfig(**{"seed": spec.seed, **d.structure}))
        train_data = f["qa"]
    if not (f["run"] / "adapter" / "loralab.json").exists():
        cfg = TrainConfig(**{"seed": spec.seed, "domain": d.domain, **spec.train}, model=spec.model,
                          data=str(train_data.resolve()), out=str(f["run"]))
        train(cfg, progress=progress)
    build_index([str(f["ingest"])], f["index"], chunk=spec.index.chunk, overlap=spec.index.overlap,
                progress=progress)
    return f


def table(res: dict) -> str:
    """Markdown table of the four conditions (means with 95 % intervals)."""
    def ci(x, scale=1.0, fmt="{:.3f}"):
        if x is None:
            return "—"
        return f"{fmt.format(scale * x['mean'])} [{fmt.format(scale * x['lo'])}, {fmt.format(scale * x['hi'])}]"

    rows = ["| condition | answer nll (nats/token) | exact match (%) | answer contained (%) | "
            "contamination (Δ nats/token) |", "|---|---|---|---|---|"]
    for c, s in res["summary"].items():
        rows.append(f"| {c} | {ci(s['answer_nll'])} | {ci(s['exact_match'], 100, '{:.1f}')} | "
                    f"{ci(s['contains'], 100, '{:.1f}')} | {ci(s['contamination'], fmt='{:+.3f}')} |")
    return "\n".join(rows)


def answer_four_ways(model: str, adapter: str | Path, card: dict, index, docs: set[str], *, k: int,
                     limit: int | None, game_hint: bool, max_new_tokens: int, foreign: str, prompts: int,
                     seed: int, none: str, device: str = "auto", dtype: str = "auto",
                     progress: bool = True) -> tuple[dict, object]:
    """DROP questions about `docs` (a seeded subset of `limit`) answered four ways by `adapter` on
    `model` with passages from `index`, contamination on `prompts` prompts of `foreign`; the
    result carries its finding. `none` is the error when no question is about those documents.
    Returns (result, the loaded model with the adapter)."""
    from .adapters import apply_adapters
    from .evaluate.drift import domain_prompts
    from .evaluate.rag import drop_questions, finding, four_way
    from .models import load

    qs = drop_questions(docs, game_hint=game_hint)
    if limit is not None and len(qs) > limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(qs))[:limit])
        qs = [qs[i] for i in keep]
    if not qs:
        raise UserError(none)
    fprompts = domain_prompts(foreign, prompts, seed=seed) if prompts else []
    loaded = apply_adapters(load(model, device=device, dtype=dtype), [adapter])
    trig = card.get("trigger") if card.get("trigger_mode") == "prefix" else None
    res = four_way(loaded, index, qs, foreign=fprompts, k=k, max_new_tokens=max_new_tokens, trigger=trig, seed=seed,
                   progress=progress)
    res["finding"] = finding(res)
    return res, loaded


def run(spec: RagSpec, progress: bool = True) -> dict:
    from .adapters import load_card
    from .data.records import read_records
    from .data.split import doc_key

    f = prepare(spec, progress)
    held_docs = {doc_key(r) for r in read_records(f["held"])}
    card = load_card(f["run"]) or {}
    e = spec.eval
    res, loaded = answer_four_ways(
        spec.model, f["run"], card, f["index"], held_docs, k=spec.index.k, limit=e.limit, game_hint=e.game_hint,
        max_new_tokens=e.max_new_tokens, foreign=e.foreign, prompts=e.prompts, seed=spec.seed, progress=progress,
        none=f"no {e.questions} questions about the {len(held_docs)} held-out documents")
    res["spec"] = spec.model_dump()
    res["model"] = {"spec": spec.model, "fingerprint": loaded.fingerprint}
    res["adapter"] = {"path": str(f["run"] / "adapter"), "train_examples": card.get("train_examples"),
                      "data": card.get("data")}
    res["held_out_documents"] = len(held_docs)
    root = Path(spec.out)
    write_json(root / "results.json", res)
    md = table(res)
    with atomic_open(root / "table.md") as fh:
        fh.write(md + "\n\n" + res["finding"] + "\n")
    return {"table": md, "finding": res["finding"], "path": str(root / "results.json"), "results": res}


def eval_adapter(model: str, adapter: str | Path, index: str | Path, *, k: int = 3, limit: int | None = 60,
                 game_hint: bool = True, max_new_tokens: int = 16, foreign: str = "medical", prompts: int = 20,
                 seed: int = 0, device: str = "auto", dtype: str = "auto", progress: bool = True) -> dict:
    """`loralab eval --rag INDEX`: the four-way comparison (base, base + RAG, adapter, adapter +
    RAG) for one trained adapter, on DROP questions about the documents of `index` that the
    adapter never trained on (its card's `data.path` names what it trained on)."""
    from .adapters import load_card
    from .data.records import read_records
    from .data.split import doc_key
    from .rag import open_index

    idx = open_index(index)
    card = load_card(adapter)
    data = ((card or {}).get("data") or {}).get("path")
    if not data or not Path(data).exists():
        raise UserError(f"--rag: adapter {adapter} has no card naming its training data (data.path), so the "
                        "documents it never saw cannot be told apart")
    trained = {doc_key(r) for r in read_records(data)}
    indexed = {c["source"] for c in idx.chunks}
    docs = indexed - trained
    res, loaded = answer_four_ways(
        model, adapter, card, idx, docs, k=k, limit=limit, game_hint=game_hint, max_new_tokens=max_new_tokens,
        foreign=foreign, prompts=prompts, seed=seed, device=device, dtype=dtype, progress=progress,
        none=f"--rag: no DROP question is about the {len(docs)} documents of {index} that the adapter "
             f"did not train on (index an NFL corpus such as olmo:drop-nfl)")
    p0 = next(loaded.model.parameters())
    res["model"] = {"spec": model, "fingerprint": loaded.fingerprint, "dtype": str(p0.dtype).replace("torch.", ""),
                    "device": str(p0.device)}
    res["adapter"] = {"path": str(adapter), "data": card.get("data")}
    res["index"] = {"path": str(index), "k": k, "documents": len(indexed), "unseen_documents": len(docs)}
    return res
