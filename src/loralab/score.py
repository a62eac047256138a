"""Per-record perplexity and Instruction-Following Difficulty: `loralab data score`.

    loralab data score data/medical --out data/medical.scored
    loralab data score data/medical --out scored --model smollm2-135m --adapter runs/a1/adapter
    loralab data score data/medical --out scored --engine ray --workers 2
    loralab data score data/medical --out scored --precision fast     # low-precision frozen weights

Precision: `exact` (default) runs fp32 frozen weights; `fast` runs the fastest
low-precision format `loralab doctor` measured here (bf16, or int8 dynamic quantization of
every frozen linear layer, the vocabulary projection included) that also passed a rank
check on this model: its IFD on 96 calibration records ranks like fp32's (Spearman rho >=
0.99; loralab.fidelity, once per model and machine, cached); `--dtype` overrides both.
The precision that produced a score ('cpu/float32', 'cpu/bfloat16', 'cpu/int8-dynamic')
is stored with it (meta.score.precision, the card's `precision`) and is part of its cache key.

Scores (written to each record's meta["score"]):

  prompted records (qa, instruction, chat) — the prompt is the chat-template rendering of
  everything before the last assistant turn (`render(record, "chat", tokenizer)`):
    loss_cond      mean -log p(response tokens | prompt)                       nats/token
    loss_resp      mean -log p(response tokens | the same template, EMPTY user turn)
    ifd            loss_cond / loss_resp: Instruction-Following Difficulty (Cherry-LLM,
                   Li et al. 2024, "From Quantity to Quality"). Near 1: the prompt does not
                   help predict the response; > 1: the prompt misleads.
    ppl_cond, ppl_resp = exp(loss_cond), exp(loss_resp); Superfiltering's ratio
                   exp(loss_cond - loss_resp) = ppl_cond / ppl_resp follows from them.
    n_resp_tokens  response tokens scored (the response includes the end-of-turn marker
                   the chat template closes it with, as training learns it)
  raw records:
    loss, ppl      mean -log p(text tokens | BOS) and its exp; no IFD (there is no prompt).
    n_tokens

BOS handling, decided once: the chat template already opens with a special token
(SmolLM2: `<|im_start|>`), so chat-rendered text gets no extra BOS; a raw text gets the
tokenizer's BOS (else its EOS) as the single context token, so its first token is scored.

The response-only pass keeps the record's system turns and replaces every other prompt turn
with one empty user turn, rendered by the same chat template: the markup around the response
is identical in both passes and only the prompt's content differs.

Both passes of every record go to the shared log-prob engine in ONE call (length-sorted,
token-budget batches). Scores are cached (sqlite under $LORALAB_HOME/scores/) by
(model fingerprint, precision, adapter digest, record content, window, scorer version), so
re-scoring the same records with the same model costs no forward pass.
Unusable records (no response, empty response, response longer than the window, invalid
JSON) go to quarantine.jsonl with their line and reason; read = kept + quarantined.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Sequence

from pydantic import BaseModel, ConfigDict, Field

from . import logprobs
from .data.records import (  # noqa: F401 - read_rows / response_text are used from here too
    CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record, content_id, read_rows, response_text, to_messages,
)
from .data.card import stage_card
from .data.render import chat_split
from .io import atomic_dir, write_json, write_jsonl
from .models import DEFAULT_MODEL, Loaded, home

SCORER_VERSION = "1"
Pair = tuple[list[int], list[int]]


class ScoreConfig(BaseModel):
    """Configuration of `loralab data score` (one model per stage; flags overlay it)."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field(DEFAULT_MODEL, description="Model spec: smollm2-135m, tiny-random, an HF folder or hub id.")
    adapter: str | None = Field(None, description="PEFT adapter folder applied on the model (None: base model).")
    device: str = Field("auto", description="auto | cpu | cuda[:N] (see loralab.device).")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 | int8-dynamic for the frozen weights (overrides precision; no rank check).")
    precision: Literal["exact", "fast"] = Field("exact", description=(
        "exact: fp32 frozen weights; fast: the fastest low-precision format measured on this machine "
        "(bf16/fp16, or int8 dynamic quantization of every frozen linear layer incl. the vocabulary "
        "projection; see `loralab doctor`) among those measured, once per model, to rank IFD like fp32 "
        "(loralab.fidelity: Spearman rho >= 0.99 on 96 MedMCQA records). benchmarks/score.py measures "
        "how far fast ranks from exact on 1,000."))
    batch_tokens: int | None = Field(None, ge=16, description="Padded tokens per forward pass (rows x length); default 2048 on CPU, 16384 on CUDA.")
    logits_chunk: int = Field(512, ge=1, description="Rows of fp32 vocabulary logits materialised at once.")
    max_length: int | None = Field(None, description="Context window in tokens (default: the model's).")
    render: Literal["auto", "chat", "plain"] = Field("auto", description=(
        "How a prompted record is shown to the scorer. chat: the tokenizer's chat template (an "
        "instruction-tuned scorer); plain: instruction and input as paragraphs, then the response, "
        "after BOS (a base model's view, as Superfiltering scores with GPT-2); auto: chat when the "
        "tokenizer has a chat template, else plain."))
    engine: Literal["local", "ray"] = Field("local", description="local: in-process; ray: Ray Data actors.")
    workers: int = Field(2, ge=1, description="Ray actors (each holds one copy of the model).")
    ray_batch_records: int = Field(64, ge=1, description="Records per Ray actor call.")
    cache: bool = Field(True, description="Reuse and store scores in the score cache.")
    cache_dir: str | None = Field(None, description="Score cache folder (default: $LORALAB_HOME/scores).")
    progress: bool = Field(True, description="Show a progress bar while scoring.")


@dataclass
class Job:
    """One record's token pairs: raw -> [(BOS, text)]; prompted -> [conditional, response-only]."""

    index: int  # position among the records read
    key: str  # cache key
    raw: bool
    pairs: list[Pair]


# ------------------------------------------------------------------ adapters

def adapter_digest(path: str | None) -> str:
    """sha256 over an adapter folder's config and weight files ('' for no adapter)."""
    if not path:
        return ""
    folder = Path(path)
    files = sorted(f for f in folder.iterdir() if f.is_file() and f.name.startswith("adapter_"))
    if not files:
        raise FileNotFoundError(f"{folder} holds no adapter_config.json / adapter_model.* files")
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def with_adapter(loaded: Loaded, path: str | None) -> Loaded:
    """`loaded` with the PEFT adapter at `path` applied (every mismatch reported by loralab.adapters)."""
    from .adapters import apply_adapters

    return apply_adapters(loaded, [path]) if path else loaded


def scorer_format(cfg: ScoreConfig) -> str | None:
    """The frozen-weight format `cfg` fixes: its --dtype when given, float32 for exact; None
    for fast, whose format depends on the model (`fast_scorer`)."""
    if cfg.dtype != "auto":
        return cfg.dtype
    return "float32" if cfg.precision == "exact" else None


def calibration_ifd(loaded: Loaded, recs: Sequence[Record]) -> list[float | None]:
    """IFD of `recs` under `loaded` as it is (adapter already applied), nothing cached."""
    cfg = ScoreConfig(model=loaded.spec, precision="exact", cache=False, progress=False)
    res = score_records(list(enumerate(recs, 1)), cfg, loaded)
    by = {r.id: r.meta["score"].get("ifd") for r in res.records}
    return [by.get(r.id) for r in recs]


def fast_scorer(cfg: ScoreConfig, base: Loaded) -> Loaded:
    """`base` (fp32, adapter applied) in the fastest low-precision format measured here that
    ranks IFD like fp32 (loralab.fidelity); `base` itself, in fp32, when none does."""
    from . import device as devpolicy
    from . import fidelity

    cands = devpolicy.fast_candidates(devpolicy.profile(base.device).gflops)
    fmt, _ = fidelity.choose(base, adapter_digest(cfg.adapter), cands, calibration_ifd,
                             say=(lambda m: print(m, file=sys.stderr)) if cfg.progress else None)
    return base if fmt == "float32" else fidelity.convert(base, fmt, inplace=True)


def load_scorer(cfg: ScoreConfig) -> Loaded:
    from . import device as devpolicy
    from . import models

    fmt = scorer_format(cfg)
    if fmt is None or fmt == devpolicy.INT8:  # load fp32 and put the adapter on it first
        base = with_adapter(models.load(cfg.model, device=cfg.device, dtype="float32"), cfg.adapter)
        if fmt == devpolicy.INT8:  # asked for by --dtype: no rank check
            devpolicy.quantize_int8(base.model)
            return base
        return fast_scorer(cfg, base)
    return with_adapter(models.load(cfg.model, device=cfg.device, dtype=fmt), cfg.adapter)


# ------------------------------------------------------------- preparation

def empty_prompt_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """System turns kept, all other prompt turns replaced by one empty user turn."""
    system = [m for m in messages[:-1] if m["role"] == "system"]
    return system + [{"role": "user", "content": ""}, messages[-1]]


def window_of(model, cfg: ScoreConfig) -> int:
    m = getattr(model, "get_base_model", lambda: model)()
    return cfg.max_length or getattr(m.config, "max_position_embeddings", None) or 2048


def render_mode(cfg_render: str, tok) -> str:
    """'chat' or 'plain' for `ScoreConfig.render` on this tokenizer."""
    if cfg_render != "auto":
        return cfg_render
    return "chat" if getattr(tok, "chat_template", None) else "plain"


def prepare(rec: Record, tok, window: int, render: str = "chat") -> tuple[bool, list[Pair]] | str:
    """(is_raw, token pairs) for one record, or the reason it cannot be scored."""
    resp = response_text(rec)
    if resp is None:
        return "no response: the record does not end with an assistant turn"
    if not resp.strip():
        return "empty response"
    if rec.kind == "raw":
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        pairs = [([bos], tok.encode(rec.text, add_special_tokens=False))]
    elif render == "plain":
        from .data.render import render_plain

        r = render_plain(rec)
        pairs = [logprobs.encode_pair(tok, r.prompt, r.response, bos=True),
                 logprobs.encode_pair(tok, "", r.response, bos=True)]
    else:
        msgs = to_messages(rec)
        try:
            cond = chat_split(msgs, tok)
            alone = chat_split(empty_prompt_messages(msgs), tok)
        except Exception as e:  # a template that cannot render this conversation
            return f"cannot render with the chat template: {type(e).__name__}: {e}"
        pairs = [logprobs.encode_pair(tok, cond.prompt, cond.response, bos=False),
                 logprobs.encode_pair(tok, alone.prompt, alone.response, bos=False)]
    n = max(len(c) for _, c in pairs)
    if n > window:
        return f"response of {n} tokens exceeds the {window}-token context window"
    if min(len(c) for _, c in pairs) == 0:
        return "empty response after tokenization"
    return rec.kind == "raw", [(list(a), list(b)) for a, b in pairs]


def cache_key(model_id: str, adapter: str, rec: Record, window: int, render: str = "chat") -> str:
    parts = [SCORER_VERSION, model_id, adapter, content_id(rec), str(window)]
    blob = "\0".join(parts + ([render] if render != "chat" else []))  # chat keys as before
    return hashlib.sha256(blob.encode()).hexdigest()


# ----------------------------------------------------------------- numerics

def _mean_nll(s: logprobs.TokenScores) -> float:
    return -s.sum / max(s.n, 1)


def _exp(x: float) -> float:
    return math.exp(x) if x < 700 else float("inf")


def summarize(raw: bool, scores: Sequence[logprobs.TokenScores]) -> dict[str, Any]:
    """Score dict of one record from its engine results (one for raw, two for prompted)."""
    if raw:
        loss = _mean_nll(scores[0])
        return {"loss": loss, "ppl": _exp(loss), "n_tokens": scores[0].n}
    cond, alone = scores
    lc, lr = _mean_nll(cond), _mean_nll(alone)
    out = {"loss_cond": lc, "loss_resp": lr, "ifd": lc / lr if lr > 0 else None,
           "ppl_cond": _exp(lc), "ppl_resp": _exp(lr), "n_resp_tokens": cond.n}
    if cond.truncated:
        out["truncated_prompt_tokens"] = cond.truncated
    return out


def compute(model, jobs: Sequence[Job], *, batch_tokens: int, logits_chunk: int, window: int,
            pad_id: int, progress: bool | str = False, stats: dict | None = None) -> list[dict[str, Any]]:
    """Scores of every job: all distinct pairs of all jobs go to the engine in one call.

    Identical pairs (e.g. the response-only pass of two records with the same answer) are
    scored once.
    """
    slot: dict[tuple, int] = {}
    uniq: list[Pair] = []
    for j in jobs:
        for a, b in j.pairs:
            if slot.setdefault((tuple(a), tuple(b)), len(uniq)) == len(uniq):
                uniq.append((a, b))
    if not uniq:
        return []
    res = logprobs.token_logprobs(model, uniq, batch_tokens=batch_tokens, logits_chunk=logits_chunk,
                                  max_length=window, pad_id=pad_id, progress=progress, stats=stats)
    return [summarize(j.raw, [res[slot[(tuple(a), tuple(b))]] for a, b in j.pairs]) for j in jobs]


# -------------------------------------------------------------------- cache

class ScoreCache:
    """sqlite key -> JSON score; one transaction per batch of writes."""

    def __init__(self, folder: str | Path | None):
        self.path = Path(folder or home() / "scores") / "scores.sqlite"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS scores (key TEXT PRIMARY KEY, value TEXT NOT NULL)")

    def get_many(self, keys: Sequence[str]) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for s in range(0, len(keys), 500):  # sqlite's bound-parameter limit
            chunk = list(keys[s: s + 500])
            q = f"SELECT key, value FROM scores WHERE key IN ({','.join('?' * len(chunk))})"
            out.update({k: json.loads(v) for k, v in self.db.execute(q, chunk)})
        return out

    def put_many(self, items: dict[str, dict]) -> None:
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO scores VALUES (?, ?)",
                                [(k, json.dumps(v)) for k, v in items.items()])

    def close(self) -> None:
        self.db.close()


# ---------------------------------------------------------------- the stage

@dataclass
class Scored:
    """In-memory result of scoring: kept records (with meta.score), quarantine rows, stats."""

    records: list[Record]
    quarantine: list[dict]
    stats: dict[str, Any]


def make_jobs(rows: Sequence[tuple[int, Record]], tok, window: int, model_id: str, adapter: str,
              source: str, render: str = "chat") -> tuple[list[Job], list[dict]]:
    """Token pairs and cache keys of the scorable rows; quarantine entries for the others."""
    jobs, quarantine = [], []
    for i, (line, rec) in enumerate(rows):
        prep = prepare(rec, tok, window, render)
        if isinstance(prep, str):
            quarantine.append({"reason": prep, "stage": "score", "location": {"path": source, "line": line},
                               "record": rec.to_json()})
        else:
            jobs.append(Job(i, cache_key(model_id, adapter, rec, window, render), *prep))
    return jobs, quarantine


def score_records(rows: Sequence[tuple[int, Record]], cfg: ScoreConfig, loaded: Loaded | None = None,
                  *, source: str = "") -> Scored:
    """Score records already read (rows of (line, Record)).

    `loaded` replaces cfg.model when given; cfg.adapter is then applied on top of it, in place
    (PEFT injects its layers into the model), so pass a copy you may change.
    """
    t0 = time.perf_counter()
    loaded = with_adapter(loaded, cfg.adapter) if loaded is not None else load_scorer(cfg)
    tok, model = loaded.tokenizer, loaded.model
    window = window_of(model, cfg)
    from . import device as devpolicy

    prec = devpolicy.precision_record(model)
    adapter = adapter_digest(cfg.adapter)
    if cfg.precision == "fast" and cfg.dtype == "auto":  # the rank checks that chose the format
        from . import fidelity

        cands = devpolicy.fast_candidates(devpolicy.profile(loaded.device).gflops)
        prec["fidelity"] = fidelity.lookup(loaded.fingerprint, adapter, loaded.device.type, cands)
    placement = prec["precision"]  # device/format ('cpu/float32', 'cpu/int8-dynamic'): part of the cache key
    render = render_mode(cfg.render, tok)
    jobs, quarantine = make_jobs(rows, tok, window, f"{loaded.fingerprint}/{placement}", adapter, source, render)
    cache = ScoreCache(cfg.cache_dir) if cfg.cache else None
    hits = cache.get_many([j.key for j in jobs]) if cache else {}
    todo = [j for j in jobs if j.key not in hits]
    t1 = time.perf_counter()
    work: dict[str, int] = {}
    if cfg.engine == "ray" and todo:
        # the actors use the format chosen here (their one-thread speed profile may order formats otherwise)
        fresh = ray_compute(todo, cfg.model_copy(update={"dtype": prec["format"]}), loaded.fingerprint, window)
    else:
        fresh = compute(model, todo, batch_tokens=cfg.batch_tokens, logits_chunk=cfg.logits_chunk,
                        window=window, pad_id=tok.pad_token_id or 0,
                        progress="scoring" if cfg.progress else False, stats=work)
    t2 = time.perf_counter()
    new = {j.key: s for j, s in zip(todo, fresh)}
    if cache:
        cache.put_many(new)
        cache.close()
    hits.update(new)
    kept = []
    for j in jobs:
        rec = rows[j.index][1]
        meta = {**rec.meta, "score": {**hits[j.key], "model": loaded.fingerprint, "adapter": adapter or None,
                                      "precision": placement, **({"render": render} if render != "chat" else {})}}
        kept.append(rec.model_copy(update={"meta": meta}))
    distinct = {(tuple(a), tuple(b)) for j in todo for a, b in j.pairs}
    tokens = sum(len(a) + len(b) - 1 for a, b in distinct)  # positions separate passes would run
    stats = {"model": loaded.spec, "fingerprint": loaded.fingerprint, "placement": placement,
             "precision": {**prec, "asked": cfg.precision if cfg.dtype == "auto" else f"--dtype {cfg.dtype}"},
             "adapter": cfg.adapter, "adapter_digest": adapter or None, "window": window, "render": render,
             "scorer_version": SCORER_VERSION, "engine": cfg.engine, "from_cache": len(jobs) - len(todo),
             "computed": len(todo), "forward_tokens": tokens,
             "computed_tokens": work.get("computed_tokens"),  # after prefix sharing (in-process engine)
             "score_seconds": round(t2 - t1, 3),
             "tokens_per_s": round(tokens / (t2 - t1), 1) if todo and t2 > t1 else None,
             "seconds": round(time.perf_counter() - t0, 3)}
    return Scored(kept, quarantine, stats)


def _describe(values: list[float]) -> dict[str, float] | None:
    import numpy as np

    v = np.array([x for x in values if x is not None and math.isfinite(x)], dtype=np.float64)
    if not v.size:
        return None
    q = np.quantile(v, [0.05, 0.5, 0.95])
    return {"mean": float(v.mean()), "p05": float(q[0]), "median": float(q[1]), "p95": float(q[2])}


def score(records_dir: str | Path, out_dir: str | Path, cfg: ScoreConfig | None = None,
          loaded: Loaded | None = None) -> dict[str, Any]:
    """Score every record of `records_dir` into `out_dir` (records, quarantine, data card)."""
    cfg = cfg or ScoreConfig()
    src = Path(records_dir)
    if Path(out_dir).resolve() == (src if src.is_dir() else src.parent).resolve():
        raise ValueError(f"--out {out_dir} is the input folder; write the scored records elsewhere")
    rows, bad = read_rows(src)
    res = score_records(rows, cfg, loaded, source=str(src / RECORDS_FILE if src.is_dir() else src))
    quarantine = bad + res.quarantine
    reasons: dict[str, int] = {}
    for q in quarantine:
        key = q["reason"].split(":")[0]
        reasons[key] = reasons.get(key, 0) + 1
    read = len(rows) + len(bad)
    extra = {
        "input": str(src),
        "counts": {"read": read, "kept": len(res.records), "quarantined": len(quarantine),
                   "reconciled": read == len(res.records) + len(quarantine)},
        "quarantine_reasons": reasons, **res.stats,
        "summary": {k: _describe([r.meta["score"].get(k) for r in res.records])
                    for k in ("ifd", "loss_cond", "loss_resp", "ppl")},
    }
    upstream = (src / CARD_FILE) if src.is_dir() else None
    prior = json.loads(upstream.read_text()) if upstream is not None and upstream.exists() else None
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / RECORDS_FILE, (r.to_json() for r in res.records))
        write_jsonl(tmp / QUARANTINE_FILE, quarantine)
        # one data-card schema for every stage (loralab.data.card), plus the scorer's own fields
        card = stage_card(tmp, "score", source=str(src / RECORDS_FILE if src.is_dir() else src), read=read,
                          prior=prior, config=cfg.model_dump(), **extra)
        if prior is not None:
            card["upstream_card"] = prior
        write_json(tmp / CARD_FILE, card)
    return card


# --------------------------------------------------------------- Ray engine

class RayScorer:
    """Ray Data actor: holds one model copy and scores batches of token pairs."""

    def __init__(self, cfg: dict, fingerprint: str, window: int):
        import torch

        torch.set_num_threads(1)  # one core per actor: the pool, not threads, scales out
        self.cfg = ScoreConfig(**cfg)
        self.loaded = load_scorer(self.cfg)
        if self.loaded.fingerprint != fingerprint:
            raise RuntimeError(f"worker loaded model {self.loaded.fingerprint}, driver has {fingerprint}")
        self.window = window

    def __call__(self, batch: dict) -> dict:
        jobs = [Job(int(i), "", bool(r), [tuple(p) for p in json.loads(x)])
                for i, r, x in zip(batch["index"], batch["raw"], batch["pairs"])]
        res = compute(self.loaded.model, jobs, batch_tokens=self.cfg.batch_tokens,
                      logits_chunk=self.cfg.logits_chunk, window=self.window,
                      pad_id=self.loaded.tokenizer.pad_token_id or 0)
        return {"index": [j.index for j in jobs], "score": [json.dumps(s) for s in res]}


def ray_compute(jobs: Sequence[Job], cfg: ScoreConfig, fingerprint: str, window: int) -> list[dict]:
    """The same `compute`, run by a pool of `cfg.workers` Ray actors over Ray Data batches."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--engine ray needs Ray: pip install 'ray[data]'") from e
    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=cfg.workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    try:
        import ray.data

        items = [{"index": n, "raw": j.raw, "pairs": json.dumps(j.pairs)} for n, j in enumerate(jobs)]
        ds = ray.data.from_items(items).map_batches(
            RayScorer, batch_size=cfg.ray_batch_records, concurrency=cfg.workers, num_cpus=1,
            batch_format="numpy", fn_constructor_kwargs={
                "cfg": cfg.model_dump(), "fingerprint": fingerprint, "window": window})
        rows = ds.take_all()
    finally:
        if started:
            ray.shutdown()
    by = {int(r["index"]): json.loads(r["score"]) for r in rows}
    return [by[n] for n in range(len(jobs))]


# ------------------------------------------------------ weak-to-strong check

def agreement(a: Sequence[dict], b: Sequence[dict], fracs: Sequence[float] = (0.05, 0.10, 0.15)) -> dict:
    """How two scorers agree on the same records (score dicts in the same order).

    Spearman rho of IFD (prompted records) and of perplexity (ppl_cond, or ppl for raw),
    and for each fraction f the overlap |top_a ∩ top_b| / k of the k = max(1, round(f N))
    highest-IFD records, beside the overlap two random k-subsets have on average: k / N.
    """
    from .fidelity import spearman_test as rho

    ppl = lambda s: s.get("ppl_cond", s.get("ppl"))  # noqa: E731
    ifd_a, ifd_b = [s.get("ifd") for s in a], [s.get("ifd") for s in b]
    both = [i for i in range(len(a)) if ifd_a[i] is not None and ifd_b[i] is not None]
    n = len(both)
    overlap = []
    for f in fracs:
        k = max(1, round(f * n)) if n else 0
        top_a = set(sorted(both, key=lambda i: -ifd_a[i])[:k])
        top_b = set(sorted(both, key=lambda i: -ifd_b[i])[:k])
        overlap.append({"frac": f, "k": k, "overlap": len(top_a & top_b) / k if k else None,
                        "random_expectation": k / n if n else None})
    return {"n": len(a), "n_ifd": n, "spearman_ifd": rho(ifd_a, ifd_b),
            "spearman_ppl": rho([ppl(s) for s in a], [ppl(s) for s in b]), "top_overlap": overlap}


def consistency(records_dir: str | Path, cfg_a: ScoreConfig, cfg_b: ScoreConfig, out: str | Path | None = None,
                fracs: Sequence[float] = (0.05, 0.10, 0.15), loaded_a: Loaded | None = None,
                loaded_b: Loaded | None = None) -> dict:
    """Score the same records with two models/adapters; report their agreement (saved as JSON)."""
    rows, _ = read_rows(records_dir)
    res_a = score_records(rows, cfg_a, loaded_a, source=str(records_dir))
    res_b = score_records(rows, cfg_b, loaded_b, source=str(records_dir))
    sa = {r.id: r.meta["score"] for r in res_a.records}
    sb = {r.id: r.meta["score"] for r in res_b.records}
    ids = [r.id for r in res_a.records if r.id in sb]
    report = {"records": str(records_dir), "read": len(rows),
              "model_a": {k: res_a.stats[k] for k in ("model", "fingerprint", "adapter", "placement")},
              "model_b": {k: res_b.stats[k] for k in ("model", "fingerprint", "adapter", "placement")},
              **agreement([sa[i] for i in ids], [sb[i] for i in ids], fracs)}
    if out is not None:
        write_json(out, report)
    return report
