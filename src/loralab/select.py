"""Selection policies over scored records: `loralab data select`.

    loralab data select scored/ --out selected/ --policy gibberish_guard --policy ifd_topk:10
    loralab data select scored/ --out base/ --policy random:10 --seed 3
    loralab data select scored/ --out div/ --policy ifd_topk:30 --policy diversity:10

Policy syntax: NAME[:ARGS] where ARGS is a comma-separated list of values; a bare value
fills the policy's parameters in order, `key=value` names one. Policies run in the order
given, each on what the previous ones kept; every record a policy drops goes to
quarantine.jsonl with the policy's name as its reason and a detail. read = kept + quarantined.

  ifd_topk:PCT                     keep the PCT % (of this policy's input) with the highest
                                   IFD among records with IFD < 1 (Cherry-LLM); IFD >= 1
                                   means the prompt does not help, so those always go.
  random:PCT                       keep a seeded random PCT % (the baseline every policy
                                   should beat)
  ppl_band:LO,HI[,mode=quantile|value][,field=NAME]
                                   keep perplexity within [LO, HI]: quantiles of this input
                                   (default) or absolute values; field defaults to ppl_cond
                                   (ppl for raw records)
  gibberish_guard[:z=3.5,max_loss=..,min_letter_ratio=0.5,max_run=12,vowels=0.15-0.75,
                  min_unique_ratio=0.08]
                                   drop records whose response alone is implausible:
                                   loss_resp (loss for raw) above `max_loss` or above a robust
                                   z-score `z` (median/MAD over this input), or failing a
                                   character check (letter ratio, longest repeated character
                                   run, vowel ratio of Latin letters, distinct characters in
                                   the first 200). IFD alone rewards such noise: a response
                                   the prompt cannot explain has IFD near 1.
  diversity:PCT                    keep PCT % by k-center greedy on MiniLM sentence
                                   embeddings (cosine), seeded by the highest-IFD record;
                                   run it after an IFD pre-selection.
"""

from __future__ import annotations

import inspect
import json
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import Field, field_validator

from .config import StageConfig
from .data.card import stage_card
from .data.checks import char_check
from .data.records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record, read_rows, response_text, to_messages
from .errors import UserError
from .io import atomic_dir, write_json, write_jsonl

Drops = dict[int, str]  # index in the policy's input -> detail


class SelectConfig(StageConfig):
    """Configuration of `loralab data select`."""

    policies: list[str] = Field(..., min_length=1, description="Policies in order, NAME[:ARGS] (see module doc); "
                                "percentages in (0, 100], quantiles in [0, 1].")
    seed: int = Field(0, description="Seed of the random policy (and any tie-breaking).")

    @field_validator("policies")
    @classmethod
    def _parse(cls, v: list[str]) -> list[str]:
        problems = []
        for spec in v:
            try:
                parse_policy(spec)
            except UserError as e:
                problems.append(str(e))
        if problems:  # every policy's problem at once
            raise ValueError(" | ".join(problems))
        return v


@dataclass
class Context:
    """What a policy may use besides the records: a seeded RNG and the embedding function."""

    rng: random.Random
    embed: Callable[[list[str]], np.ndarray] | None = None  # texts -> (n, d) unit vectors
    notes: dict[str, Any] = field(default_factory=dict)


def _score(rec: Record) -> dict:
    return rec.meta.get("score") or {}


def _n_keep(pct: float, n: int) -> int:
    return min(n, max(0, round(pct / 100 * n)))


# ---------------------------------------------------------------- policies

def ifd_topk(recs: list[Record], ctx: Context, pct: float = 10.0) -> Drops:
    ifd = [_score(r).get("ifd") for r in recs]
    cands = sorted((i for i, v in enumerate(ifd) if v is not None and v < 1), key=lambda i: -ifd[i])
    keep = set(cands[: _n_keep(pct, len(recs))])
    drops = {}
    for i, v in enumerate(ifd):
        if i not in keep:
            drops[i] = "no ifd score" if v is None else ("ifd >= 1" if v >= 1 else f"ifd {v:.4f} below top {pct:g} %")
    return drops


def random_pct(recs: list[Record], ctx: Context, pct: float = 10.0) -> Drops:
    keep = set(ctx.rng.sample(range(len(recs)), _n_keep(pct, len(recs))))
    return {i: f"not in the seeded random {pct:g} %" for i in range(len(recs)) if i not in keep}


def _ppl(rec: Record, field_name: str) -> float | None:
    s = _score(rec)
    return s.get(field_name, s.get("ppl") if field_name == "ppl_cond" else None)


def ppl_band(recs: list[Record], ctx: Context, lo: float = 0.05, hi: float = 0.95,
             mode: str = "quantile", field: str = "ppl_cond") -> Drops:
    vals = [_ppl(r, field) for r in recs]
    have = np.array([v for v in vals if v is not None], dtype=np.float64)
    if mode == "quantile":
        if not have.size:
            return {i: f"no {field} score" for i in range(len(recs))}
        lo_v, hi_v = (float(x) for x in np.quantile(have, [lo, hi]))
    elif mode == "value":
        lo_v, hi_v = lo, hi
    else:
        raise ValueError(f"ppl_band mode must be quantile or value, not {mode!r}")
    ctx.notes["ppl_band"] = {"field": field, "lo": lo_v, "hi": hi_v}
    drops = {}
    for i, v in enumerate(vals):
        if v is None:
            drops[i] = f"no {field} score"
        elif not lo_v <= v <= hi_v:
            drops[i] = f"{field} {v:.3g} outside [{lo_v:.3g}, {hi_v:.3g}]"
    return drops


def gibberish_guard(recs: list[Record], ctx: Context, z: float = 3.5, max_loss: float | None = None,
                    min_letter_ratio: float = 0.5, max_run: int = 12, vowels: str = "0.15-0.75",
                    min_unique_ratio: float = 0.08) -> Drops:
    loss = [_score(r).get("loss_resp", _score(r).get("loss")) for r in recs]
    have = np.array([v for v in loss if v is not None], dtype=np.float64)
    cut = max_loss if max_loss is not None else math.inf
    if z and have.size >= 8:  # a robust z needs a handful of values to mean anything
        med = float(np.median(have))
        mad = 1.4826 * float(np.median(np.abs(have - med)))  # ~ std for a normal
        if mad > 0:
            cut = min(cut, med + z * mad)
    ctx.notes["gibberish_guard"] = {"loss_cut": None if math.isinf(cut) else cut}
    v_lo, v_hi = (float(x) for x in vowels.split("-"))
    drops = {}
    for i, r in enumerate(recs):
        if loss[i] is not None and loss[i] > cut:
            drops[i] = f"response-alone loss {loss[i]:.3f} > {cut:.3f}"
            continue
        why = char_check(response_text(r) or "", min_letter_ratio, max_run, (v_lo, v_hi), min_unique_ratio)
        if why:
            drops[i] = why
    return drops


def minilm_embed(texts: list[str]) -> np.ndarray:
    """(n, 384) unit-norm all-MiniLM-L6-v2 embeddings from the packaged model, offline."""
    from .embed import embed

    return embed(texts)


def k_center(emb: np.ndarray, k: int, first: int) -> list[int]:
    """Greedy k-center: repeatedly add the point farthest (cosine) from those chosen."""
    chosen = [first]
    dist = 1.0 - emb @ emb[first]  # (n,) cosine distance to the chosen set
    while len(chosen) < k:
        nxt = int(np.argmax(dist))
        chosen.append(nxt)
        dist = np.minimum(dist, 1.0 - emb @ emb[nxt])
    return chosen


def diversity(recs: list[Record], ctx: Context, pct: float = 10.0) -> Drops:
    k = _n_keep(pct, len(recs))
    if k == 0:
        return {i: f"diversity {pct:g} % keeps none" for i in range(len(recs))}
    texts = ["\n".join(m["content"] for m in to_messages(r)) for r in recs]
    emb = np.asarray((ctx.embed or minilm_embed)(texts), dtype=np.float32)
    ifd = [_score(r).get("ifd") or -1.0 for r in recs]
    keep = set(k_center(emb, k, first=int(np.argmax(ifd))))
    return {i: f"not among the {k} k-center picks" for i in range(len(recs)) if i not in keep}


POLICIES: dict[str, Callable[..., Drops]] = {
    "ifd_topk": ifd_topk, "random": random_pct, "ppl_band": ppl_band,
    "gibberish_guard": gibberish_guard, "diversity": diversity,
}


# ------------------------------------------------------------------ parsing

@dataclass
class Policy:
    name: str
    params: dict[str, Any]
    spec: str

    def __call__(self, recs: list[Record], ctx: Context) -> Drops:
        return POLICIES[self.name](recs, ctx, **self.params)


def _coerce(value: str, default: Any) -> Any:
    if isinstance(default, bool):
        return value.lower() in ("1", "true", "yes")
    if isinstance(default, int):
        return int(value)
    if isinstance(default, float) or default is None:
        return float(value)
    return value


def _pct(p: dict) -> list[str]:
    pct = p.get("pct", 10.0)
    return [] if 0 < pct <= 100 else [f"pct must be in (0, 100] (a percentage of the policy's input), got {pct:g}"]


def _band(p: dict) -> list[str]:
    lo, hi, mode = p.get("lo", 0.05), p.get("hi", 0.95), p.get("mode", "quantile")
    if mode not in ("quantile", "value"):
        return [f"mode must be quantile or value, got {mode!r}"]
    if mode == "quantile" and not 0 <= lo < hi <= 1:
        return [f"quantiles need 0 <= LO < HI <= 1, got {lo:g}, {hi:g}"]
    if mode == "value" and not 0 <= lo < hi:
        return [f"perplexity values need 0 <= LO < HI, got {lo:g}, {hi:g}"]
    return []


def _guard(p: dict) -> list[str]:
    bad = []
    if p.get("z", 3.5) < 0:
        bad.append(f"z must be >= 0 (0 = off), got {p['z']:g}")
    if p.get("max_loss") is not None and p["max_loss"] <= 0:
        bad.append(f"max_loss must be > 0, got {p['max_loss']:g}")
    for k in ("min_letter_ratio", "min_unique_ratio"):
        if k in p and not 0 <= p[k] <= 1:
            bad.append(f"{k} must be in [0, 1], got {p[k]:g}")
    if p.get("max_run", 12) < 1:
        bad.append(f"max_run must be >= 1, got {p['max_run']}")
    try:
        v_lo, v_hi = (float(x) for x in str(p.get("vowels", "0.15-0.75")).split("-"))
        if not 0 <= v_lo < v_hi <= 1:
            raise ValueError
    except ValueError:
        bad.append(f"vowels must be LO-HI with 0 <= LO < HI <= 1, got {p.get('vowels')!r}")
    return bad


# what each policy's parameters may be (problems, [] when fine)
CHECKS: dict[str, Callable[[dict], list[str]]] = {
    "ifd_topk": _pct, "random": _pct, "diversity": _pct, "ppl_band": _band, "gibberish_guard": _guard,
}


def parse_policy(spec: str) -> Policy:
    """'ifd_topk:10' -> Policy('ifd_topk', {'pct': 10.0}); see the module doc for the syntax.

    Raises UserError naming every problem: unknown name (with the closest one), unknown
    parameter, bad or out-of-range value.
    """
    from .config import suggest

    name, _, args = spec.strip().partition(":")
    if name not in POLICIES:
        raise UserError(f"unknown policy {name!r}{suggest(name, POLICIES)}; choose from {', '.join(POLICIES)}")
    sig = [p for p in inspect.signature(POLICIES[name]).parameters.values()][2:]
    defaults = {p.name: p.default for p in sig}
    params: dict[str, Any] = {}
    for n, tok in enumerate(a for a in args.split(",") if a.strip()) if args else []:
        key, eq, val = tok.partition("=")
        if not eq:
            if n >= len(sig):
                raise UserError(f"policy {spec!r}: too many values (parameters: {', '.join(defaults)})")
            key, val = sig[n].name, tok
        key = key.strip()
        if key not in defaults:
            raise UserError(f"policy {name} has no parameter {key!r}{suggest(key, defaults)} "
                            f"(parameters: {', '.join(defaults)})")
        try:
            params[key] = _coerce(val.strip(), defaults[key])
        except ValueError:
            raise UserError(f"policy {spec!r}: bad value {val!r} for {key}") from None
        if isinstance(params[key], float) and not math.isfinite(params[key]):
            raise UserError(f"policy {spec!r}: {key} must be a finite number")
    bad = CHECKS[name](params)
    if bad:
        raise UserError(f"policy {spec!r}: " + "; ".join(bad))
    return Policy(name, params, spec.strip())


# -------------------------------------------------------------------- stage

def apply_policies(recs: list[Record], policies: Sequence[Policy], ctx: Context,
                   locations: list[dict] | None = None) -> tuple[list[Record], list[dict], list[dict]]:
    """(kept, quarantine rows, per-policy counts) after running the policies in order.
    `locations` (one per record: file and line) go into each quarantine row."""
    quarantine, steps = [], []
    locs = list(locations) if locations is not None else [None] * len(recs)
    for pol in policies:
        drops = pol(recs, ctx)
        for i in sorted(drops):
            quarantine.append({"reason": pol.name, "detail": drops[i], "policy": pol.spec, "stage": "select",
                               **({"location": locs[i]} if locs[i] is not None else {}),
                               "record": recs[i].to_json()})
        steps.append({"policy": pol.spec, "name": pol.name, "params": pol.params, "in": len(recs),
                      "dropped": len(drops), "kept": len(recs) - len(drops),
                      **({"notes": ctx.notes[pol.name]} if pol.name in ctx.notes else {})})
        recs = [r for i, r in enumerate(recs) if i not in drops]
        locs = [x for i, x in enumerate(locs) if i not in drops]
    return recs, quarantine, steps


def select(scored_dir: str | Path, out_dir: str | Path, cfg: SelectConfig,
           embed: Callable[[list[str]], np.ndarray] | None = None) -> dict:
    """Run the policies over a scored records folder into `out_dir` (records, quarantine, card)."""
    policies = [parse_policy(p) for p in cfg.policies]
    rows, bad = read_rows(scored_dir)
    for b in bad:
        b["stage"] = "select"
    path = str(Path(scored_dir) / RECORDS_FILE if Path(scored_dir).is_dir() else scored_dir)
    kept, quarantine, steps = apply_policies([r for _, r in rows], policies, Context(random.Random(cfg.seed), embed),
                                             locations=[{"path": path, "line": ln} for ln, _ in rows])
    quarantine = bad + quarantine
    read = len(rows) + len(bad)
    counts = {"read": read, "kept": len(kept), "quarantined": len(quarantine),
              "reconciled": read == len(kept) + len(quarantine)}
    up = Path(scored_dir) / CARD_FILE
    prior = json.loads(up.read_text()) if up.exists() else None
    src = Path(scored_dir)
    with atomic_dir(out_dir) as tmp:
        write_jsonl(tmp / RECORDS_FILE, (r.to_json() for r in kept))
        write_jsonl(tmp / QUARANTINE_FILE, quarantine)
        card = stage_card(tmp, "select", source=str(src / RECORDS_FILE if src.is_dir() else src), read=read,
                          prior=prior, config=cfg.model_dump(), input=str(scored_dir), policies=steps, counts=counts)
        if prior is not None:
            card["upstream_card"] = prior
        write_json(tmp / CARD_FILE, card)
    return card
