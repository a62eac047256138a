"""Self-correction traces: `loralab data recipe self-correction --out DIR`.

    loralab data recipe self-correction --out data/metacog --n 200
    loralab data recipe self-correction --model tiny-random --n 20 --ratios self_correction=0.5,right_first=0.5 --out d

On checkable items (items.py) the base model makes `attempts` attempts per item (the
first greedy, the rest sampled at `temperature`); each is verified (its first committed
answer against the gold). Each item then becomes ONE trace of one kind:

  self_correction  wrong attempt -> 'Check:' that names the wrong answer -> 'Correction:'
                   -> the right answer
  restart          part of a wrong path, abandoned before it commits -> 'Let me start over.'
                   -> the right working
  insight          the right working with a 'Shortcut:' noticed at a step it applies to
  right_first      one answer, right (the model's own verified attempt when it has one)

Kinds are assigned to meet the configured ratios as far as the items allow: insight
first (only some items admit a shortcut), then the wrong-attempt kinds to items whose
model attempts were wrong (origin "model"), then to items where a seeded synthetic wrong
attempt can be made (origin "synthetic"), the rest right first time. The card records
targets, what was kept by kind and origin, and the model's attempt statistics. A trace
that fails `verify_trace` is quarantined with the verifier's reason.
"""

from __future__ import annotations

import random
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..records import Record
from ..stage import Reject
from . import items as I
from . import traces as TR
from .verify import KINDS, answers, equation_errors, verify_trace
from .write import write_recipe

DEFAULT_RATIOS = {"self_correction": 0.4, "restart": 0.15, "insight": 0.15, "right_first": 0.3}


class SelfCorrectionConfig(BaseModel):
    """Settings of the self-correction recipe; every field has a flag of the same name."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("smollm2-135m", description="Model whose attempts are sampled (the base being adapted).")
    n: int = Field(100, ge=1, description="Items (one trace each), spread evenly over `sources`.")
    sources: list[str] = Field(["arith", "gsm8k", "logic", "arc", "sciq"], description="Item sources (items.py).")
    ratios: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_RATIOS),
                                     description="Share of each trace kind (normalised).")
    attempts: int = Field(2, ge=0, description="Model attempts per item (0 = synthetic wrong attempts only).")
    temperature: float = Field(0.8, ge=0, description="Sampling temperature of attempts after the first (greedy).")
    max_new_tokens: int = Field(128, ge=8, description="Longest attempt, in tokens.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    seed: int = Field(0, description="Seeds item choice, sampling, kind assignment and synthetic errors.")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        bad = [k for k in v if k not in KINDS]
        if bad:
            raise ValueError(f"unknown trace kind(s) {', '.join(bad)}; known: {', '.join(KINDS)}")
        if any(x < 0 for x in v.values()) or sum(v.values()) <= 0:
            raise ValueError("ratios must be >= 0 and not all 0")
        return {k: v.get(k, 0.0) / sum(v.values()) for k in KINDS}


def parse_ratios(text: str) -> dict[str, float]:
    """'self_correction=0.5,right_first=0.5' -> dict (kinds not named get 0)."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        k, _, v = part.partition("=")
        try:
            out[k.strip().replace("-", "_")] = float(v)
        except ValueError:
            raise ValueError(f"ratio {part!r} is not KIND=NUMBER") from None
    return out


def targets(ratios: dict[str, float], n: int) -> dict[str, int]:
    """Largest-remainder counts summing to n."""
    raw = {k: ratios.get(k, 0.0) * n for k in KINDS}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(KINDS, key=lambda k: raw[k] - out[k], reverse=True)[: n - sum(out.values())]:
        out[k] += 1
    return out


def sample_attempts(loaded, its: list[I.Item], cfg: SelfCorrectionConfig) -> list[list[str]]:
    """`cfg.attempts` replies per item: greedy first, then sampled."""
    from ...generate import generate

    prompts = [it.prompt for it in its]
    runs = []
    for a in range(cfg.attempts):
        kw = {"temperature": 0.0} if a == 0 else {"temperature": cfg.temperature, "seed": cfg.seed * 1000 + a}
        runs.append(generate(loaded, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                             progress=f"attempt {a + 1}", **kw))
    return [[r[i] for r in runs] for i in range(len(its))]


def _judge(it: I.Item, replies: list[str]) -> tuple[TR.Attempt | None, str | None, dict]:
    """(a usable wrong model attempt, a verified right model reply, per-attempt verdict counts)."""
    wrong, right, counts = None, None, {"right": 0, "wrong": 0, "no_answer": 0}
    for r in replies:
        att = TR.cut_attempt(r, it.answer_type)
        if att is None:
            counts["no_answer"] += 1
            continue
        if att.answer == it.gold:
            counts["right"] += 1
            got = answers(r, it.answer_type)
            clean = len(got) == 1 and not (it.answer_type == "number" and equation_errors(r))
            if right is None and clean and verify_trace(r, it.gold, "right_first", it.answer_type) is None:
                right = r
        else:
            counts["wrong"] += 1
            if wrong is None and len(att.body.strip()) >= 10:
                wrong = att
    return wrong, right, counts


def assign(plans: list[dict], want: dict[str, int], rng: random.Random) -> None:
    """Sets plan["kind"] for every plan, meeting `want` as far as the plans allow."""
    order = list(range(len(plans)))
    rng.shuffle(order)
    left = dict(want)

    def take(kind: str, ok) -> None:
        for i in order:
            if left[kind] <= 0:
                return
            if "kind" not in plans[i] and ok(plans[i]):
                plans[i]["kind"] = kind
                left[kind] -= 1

    take("insight", lambda p: p["insight"] is not None)
    for origin in ("model", "synthetic"):
        for kind in ("self_correction", "restart"):
            take(kind, lambda p, o=origin: p[o] is not None)
    take("right_first", lambda p: p["right"] is not None)  # the model's own right attempts first
    take("right_first", lambda p: True)
    for p in plans:  # quotas the items could not meet: the kind with the largest deficit that fits
        if "kind" not in p:
            fits = [k for k in KINDS if k == "right_first" or (k == "insight" and p["insight"])
                    or (k in ("self_correction", "restart") and (p["model"] or p["synthetic"]))]
            p["kind"] = max(fits, key=lambda k: left[k])
            left[p["kind"]] -= 1


def build(plan: dict) -> tuple[str, str]:
    """(trace, origin) of a planned item."""
    it, kind = plan["item"], plan["kind"]
    if kind in ("self_correction", "restart"):
        att = plan["model"] or plan["synthetic"]
        return (TR.self_correction(it, att) if kind == "self_correction" else TR.restart(it, att)), att.origin
    if kind == "insight":
        return plan["insight"], "reference"
    if plan["right"] is not None:
        return plan["right"], "model"
    return TR.right_first(it), "reference"


def self_correction(out_dir: str | Path, cfg: SelfCorrectionConfig | None = None, loaded=None) -> dict:
    """Write verified traces of the four kinds to `out_dir`; returns the data card."""
    cfg = cfg or SelfCorrectionConfig()
    rng = random.Random(cfg.seed)
    raw = I.select(cfg.sources, cfg.n, part="train", seed=cfg.seed)
    usable, outcomes = [], []
    for it in raw:
        try:
            usable.append(I.resolve(it))
        except I.UnusableItem as e:
            outcomes.append(({"path": f"recipe:{it.source}", "item": it.id}, it.question,
                             Reject("unverifiable_item", str(e))))
    replies = [[] for _ in usable]
    if cfg.attempts and usable:
        if loaded is None:
            from ...models import load

            loaded = load(cfg.model)
        replies = sample_attempts(loaded, usable, cfg)
    stats = {"right": 0, "wrong": 0, "no_answer": 0}
    plans = []
    for it, reps in zip(usable, replies):
        wrong, right, counts = _judge(it, reps)
        for k, v in counts.items():
            stats[k] += v
        plans.append({"item": it, "model": wrong, "right": right, "synthetic": TR.synthetic_wrong(it, rng),
                      "insight": TR.insight(it), "first_attempt_right": bool(reps) and
                      (TR.cut_attempt(reps[0], it.answer_type) or TR.Attempt("", "", "")).answer == it.gold})
    want = targets(cfg.ratios, len(plans))
    assign(plans, want, rng)
    for p in plans:
        it = p["item"]
        trace, origin = build(p)
        loc = {"path": f"recipe:{it.source}", "item": it.id, "kind": p["kind"]}
        why = verify_trace(trace, it.gold, p["kind"], it.answer_type)
        if why:
            outcomes.append((loc, trace, Reject(why.split(":")[0], why)))
            continue
        rec = Record(kind="qa", question=it.prompt, answer=trace, domain="reasoning",
                     source={"path": f"recipe:{it.source}", "doc": it.id},
                     meta={"recipe": "self-correction", "trace_kind": p["kind"], "origin": origin, "task": it.source,
                           "gold": it.gold, "answer_type": it.answer_type})
        outcomes.append((loc, trace, rec))
    recipe = {"name": "self-correction", "ratios": cfg.ratios, "targets": want, "items": len(raw),
              "model": cfg.model if cfg.attempts else None,
              "model_attempts": {"per_item": cfg.attempts, **stats,
                                 "first_attempt_right_items": sum(p["first_attempt_right"] for p in plans)},
              "origins": {"model": "the base model's own attempt, verified",
                          "synthetic": "a seeded wrong attempt made here (one false step or a wrong option)",
                          "reference": "the item's reference working"}}
    return write_recipe(out_dir, "recipe:self-correction", outcomes, config=cfg.model_dump(), recipe=recipe,
                        role="metacognitive")
