"""Thinking-event metrics: base vs adapters vs compositions on held-out checkable items.

    from loralab.evaluate.metacog import MetacogConfig, evaluate_metacog
    res = evaluate_metacog(MetacogConfig(compositions={"sport+metacog": ["runs/sport:1", "runs/metacog:1"]},
                                         n=60, out="eval/metacog"))

Every model state answers the same held-out items (data/recipes/items.py, `part=
"heldout"`: never in a recipe's records) greedily with the step-by-step prompt. Per
item and model:
  first_right      the first committed answer ('Answer: X', else the first number /
                   letter) is the gold
  final_right      the last committed answer is the gold          -> final accuracy
  self_corrected   first wrong, final right
  false_corrected  first right, final wrong
  restart          the reply abandons a line of reasoning ('start over' / 'start again')
  length           reply length in tokens
Rates are shares of all items (so every model is compared on the same items, paired);
the conditional self-correction rate (self-corrected / first wrong) and false-correction
rate (false-corrected / first right) are ratios of sums with a cluster bootstrap.
Each adapter or composition is compared with the base by a paired bootstrap on the
same items; the p-values of all those comparisons are Holm-adjusted together.

The base model is loaded once; every adapter folder named in any composition is
loaded beside it once (PEFT), and `compose.set_weights` switches between compositions.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import Field

from ..config import StageConfig
from ..data.recipes import items as I
from ..data.recipes.verify import final_answer, first_answer
from ..io import write_json
from .stats import bootstrap_ci, holm, paired_diff_ci, ratio_ci

METRICS = ("final_right", "first_right", "self_corrected", "false_corrected", "restart", "length")
RESTART = re.compile(r"(?i)\b(?:start(?:ing)? over|start again|let me restart|let's restart)\b")


class MetacogConfig(StageConfig):
    """`loralab metacog eval`: thinking-event metrics of compositions of adapters."""

    model: str = Field("smollm2-135m", description="Base model spec.")
    compositions: dict[str, list[str]] = Field(
        default_factory=dict, description="name -> adapter specs PATH[:weight]; the base is always measured.")
    n: int = Field(60, ge=1, description="Held-out items, spread evenly over `sources`.")
    sources: list[str] = Field(["arith", "gsm8k", "logic", "arc", "sciq"], description="Item sources (items.py).")
    max_new_tokens: int = Field(160, ge=8, description="Longest reply, in tokens.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    seed: int = Field(0, description="Seed of the item choice and of bootstrap resampling.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for every 95 % interval.")
    out: str | None = Field(None, description="Folder for metrics.json and replies.jsonl (none = not written).")
    device: str = Field("auto", description="auto | cpu | cuda[:N]")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (frozen weights).")
    progress: bool = Field(True, description="Show progress bars on stderr.")


@dataclass
class Scored:
    name: str
    ids: list[str]
    values: dict[str, np.ndarray]  # metric -> (items,)
    replies: list[str] = field(default_factory=list)


def score_replies(name: str, its: list[I.Item], replies: list[str], lengths: list[int]) -> Scored:
    """Per-item metric vectors of one model's replies."""
    v: dict[str, list[float]] = {m: [] for m in METRICS}
    for it, r, n in zip(its, replies, lengths):
        first, final = first_answer(r, it.answer_type), final_answer(r, it.answer_type)
        fr, fn = first == it.gold, final == it.gold
        v["first_right"].append(float(fr))
        v["final_right"].append(float(fn))
        v["self_corrected"].append(float(not fr and fn))
        v["false_corrected"].append(float(fr and not fn))
        v["restart"].append(float(bool(RESTART.search(r))))
        v["length"].append(float(n))
    return Scored(name, [it.id for it in its], {k: np.array(x) for k, x in v.items()}, list(replies))


def summarize(scored: dict[str, Scored], baseline: str = "base", *, seed: int = 0, resamples: int = 1000) -> dict:
    """CIs per model, paired differences against `baseline` with Holm-adjusted p-values."""
    kw = dict(seed=seed, resamples=resamples)
    out: dict[str, Any] = {"models": {}, "vs_" + baseline: {}}
    for name, s in scored.items():
        v = s.values
        m = {k: bootstrap_ci(v[k], **kw) for k in METRICS}
        m["self_correction_given_wrong"] = ratio_ci(v["self_corrected"], 1.0 - v["first_right"], **kw)
        m["false_correction_given_right"] = ratio_ci(v["false_corrected"], v["first_right"], **kw)
        out["models"][name] = m
    base = scored.get(baseline)
    cmp, ps = out["vs_" + baseline], []
    if base is not None:
        for name, s in scored.items():
            if name == baseline:
                continue
            if s.ids != base.ids:
                raise ValueError(f"{name} was not measured on the baseline's items")
            cmp[name] = {k: paired_diff_ci(s.values[k], base.values[k], **kw) for k in METRICS}
            ps += [(name, k, cmp[name][k]["p"]) for k in METRICS]
        for (name, k, _), adj in zip(ps, holm([p for *_, p in ps])):
            cmp[name][k]["p_holm"] = adj
    out["correction"] = "Holm–Bonferroni over every (model, metric) comparison with the baseline"
    return out


def _generate(loaded, its: list[I.Item], cfg: MetacogConfig, label: str) -> tuple[list[str], list[int]]:
    from ..generate import generate

    replies = generate(loaded, [it.prompt for it in its], max_new_tokens=cfg.max_new_tokens,
                       batch_size=cfg.batch_size, progress=label if cfg.progress else False)
    lengths = [len(loaded.tokenizer.encode(r, add_special_tokens=False)) for r in replies]
    return replies, lengths


def measure(loaded, compositions: dict[str, list[tuple[str, float]]], its: list[I.Item], cfg: MetacogConfig
            ) -> dict[str, Scored]:
    """Base first, then each composition, all on `its`."""
    from ..adapters import apply_adapters, peft_model
    from ..compose import set_weights

    scored = {"base": score_replies("base", its, *_generate(loaded, its, cfg, "base"))}
    paths = list(dict.fromkeys(str(p) for spec in compositions.values() for p, _ in spec))
    if not paths:
        return scored
    with_adapters = apply_adapters(loaded, paths)
    names = dict(zip(paths, list(peft_model(with_adapters.model).peft_config)))
    for cname, spec in compositions.items():
        weights: dict[str, float] = {}
        for p, w in spec:
            weights[names[str(p)]] = weights.get(names[str(p)], 0.0) + w
        set_weights(with_adapters.model, weights)
        scored[cname] = score_replies(cname, its, *_generate(with_adapters, its, cfg, cname))
    return scored


def evaluate_metacog(cfg: MetacogConfig, loaded=None) -> dict:
    """Measure base + compositions on held-out items; writes metrics.json (+ replies) to cfg.out."""
    from .. import models
    from ..compose import parse_specs

    comps = {k: parse_specs(v) for k, v in cfg.compositions.items()}
    if "base" in comps:
        raise ValueError("'base' is measured always; name the compositions otherwise")
    t0 = time.time()
    its = I.select(cfg.sources, cfg.n, part="heldout", seed=cfg.seed, verified=True)
    loaded = loaded or models.load(cfg.model, device=cfg.device, dtype=cfg.dtype)
    scored = measure(loaded, comps, its, cfg)
    res = summarize(scored, seed=cfg.seed, resamples=cfg.bootstrap)
    res.update({"config": cfg.dump(), "base": {"spec": loaded.spec, "fingerprint": loaded.fingerprint},
                "items": {"n": len(its), "part": "heldout", "by_source": {s: sum(it.source == s for it in its)
                                                                          for s in cfg.sources}},
                "compositions": {k: [[p, w] for p, w in v] for k, v in comps.items()},
                "seconds": round(time.time() - t0, 1)})
    if cfg.out:
        from ..io import atomic_dir, write_jsonl

        with atomic_dir(cfg.out) as tmp:
            write_json(Path(tmp) / "metrics.json", res)
            write_jsonl(Path(tmp) / "replies.jsonl", (
                {"model": s.name, "id": i, "gold": it.gold, "reply": r,
                 **{k: float(s.values[k][j]) for k in METRICS}}
                for s in scored.values() for j, (i, it, r) in enumerate(zip(s.ids, its, s.replies))))
    return res
