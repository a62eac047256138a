"""`loralab eval`: base vs adapters on gain, forgetting, reasoning, contamination and ΔW.

    from loralab.evaluate import EvalConfig, evaluate
    metrics = evaluate(EvalConfig(model="smollm2-135m", adapters=["runs/sport"], out="eval/"))

The base model is scored once; every adapter is then loaded beside it (PEFT, no second
copy of the weights) and made active in turn, and its metrics.json (base numbers
included) is written atomically to OUT/<adapter name>/. Without adapters the base
numbers go to OUT/base/metrics.json.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ..config import StageConfig
from ..errors import UserError
from ..io import write_json
from . import drift, gen
from . import tasks as T
from .stats import paired_diff_ci, pooled_mean_ci, pooled_ratio_ci

# items per task (None = every item); chosen so the quick suite for base + one adapter
# runs in a few minutes on two CPU cores with SmolLM2-135M in bf16
SUITES: dict[str, dict[str, Any]] = {
    "quick": {
        "mc": {"arc_easy": 40, "hellaswag": 24, "piqa": 40, "winogrande": 40},
        "gen": {"arithmetic": 12}, "prompts": 6, "records": 32, "answer_tokens": 24, "cot_tokens": 48,
        "intruders": False,
    },
    "full": {
        "mc": {"arc_easy": None, "arc_challenge": None, "hellaswag": 1000, "piqa": None, "winogrande": None,
               "boolq": None, "sciq": None, "openbookqa": None, "mmlu": 1000, "medmcqa": 1000, "medqa": None},
        "gen": {"arithmetic": 200, "gsm8k": None}, "prompts": 32, "records": None, "answer_tokens": 48,
        "cot_tokens": 256, "intruders": True,
    },
}


class EvalConfig(StageConfig):
    """`loralab eval`: drift of adapters against their base, on one suite of measurements."""

    model: str = Field("smollm2-135m", description="Base model spec (see `loralab models`).")
    adapters: list[str] = Field(default_factory=list, description="Adapter folders (or run folders holding adapter/).")
    suite: Literal["quick", "full"] = Field("quick", description="quick: seeded small subsets; full: full sets.")
    out: str = Field(description="Output folder; one sub-folder with metrics.json per adapter (or base/).")
    eval_data: str | None = Field(None, description="Records folder for in-domain loss; default: each "
                                                    "adapter's own eval split, rebuilt from its card.")
    eval_split: Literal["auto", "all"] = Field(
        "auto", description="auto: a held-out folder (data card split.held_out) is used whole, any other "
        "folder only through its eval split (the adapter's eval_frac and seed); all: every record.")
    allow_overlap: bool = Field(False, description="Measure even when evaluated records are training examples "
                                "of the adapter (the overlap is then reported in metrics.json); default: refuse.")
    domain_data: dict[str, str] = Field(default_factory=dict, description="Records folder of each domain that is "
                                        "not packaged (a user's own), whose prompts join the contamination matrix.")
    extra_eval: dict[str, str] = Field(default_factory=dict, description="More held-out records folders for "
                                       "in-domain loss, by name (e.g. structured: DIR); base scored once for all.")
    tasks: list[str] | None = Field(None, description="Multiple-choice tasks instead of the suite's (see tasks.py).")
    gen_tasks: list[Literal["arithmetic", "gsm8k"]] | None = Field(
        None, description="Generation tasks instead of the suite's.")
    limit: int | None = Field(None, ge=1, description="Items per task, overriding the suite's counts.")
    contamination: bool = Field(True, description="Measure KL/JS and style leak on foreign-domain prompts.")
    domains: list[str] = Field(list(drift.DOMAINS), description="Prompt domains for the contamination matrix.")
    prompts: int | None = Field(None, ge=1, description="Prompts per domain (default: the suite's).")
    answer_tokens: int | None = Field(None, ge=1, description="Greedy answer tokens per contamination prompt.")
    cot_tokens: int | None = Field(None, ge=1, description="Greedy tokens of a step-by-step answer.")
    weights: bool = Field(True, description="ΔW diagnostics (norms, effective rank, intruder dimensions).")
    intruders: bool | None = Field(None, description="Intruder dimensions (two SVDs per adapted layer); "
                                   "default: the suite's (off in quick, on in full).")
    intruder_top_k: int = Field(10, ge=1, description="Top singular vectors of W + ΔW checked for intruders.")
    intruder_threshold: float = Field(0.5, gt=0, lt=1, description="Max |cos| below which a direction intrudes.")
    seed: int = Field(0, description="Seed of item subsets, prompt sets and bootstrap resampling.")
    bootstrap: int = Field(1000, ge=100, description="Bootstrap resamples for every 95 % interval.")
    batch_tokens: int | None = Field(None, ge=64, description="Padded tokens per forward pass (memory knob); default 2048 on CPU, 16384 on CUDA.")
    device: str = Field("auto", description="auto | cpu | cuda[:N]")
    dtype: str = Field("auto", description="auto | float32 | bfloat16 | float16 (frozen weights).")
    progress: bool = Field(True, description="Show progress bars on stderr.")

    def plan(self) -> dict[str, Any]:
        """The suite with this config's overrides applied."""
        s = dict(SUITES[self.suite])
        mc = {t: s["mc"].get(t) for t in self.tasks} if self.tasks is not None else dict(s["mc"])
        gn = {t: s["gen"].get(t, 50) for t in self.gen_tasks} if self.gen_tasks is not None else dict(s["gen"])
        if self.limit is not None:
            mc = {t: self.limit for t in mc}
            gn = {t: self.limit for t in gn}
        return {**s, "mc": mc, "gen": gn, "prompts": self.prompts or s["prompts"],
                "answer_tokens": self.answer_tokens or s["answer_tokens"], "cot_tokens": self.cot_tokens or s["cot_tokens"]}


def weights_of(spec: str) -> str:
    """Which weights a model spec stands for, as every report states next to its numbers."""
    from .. import models

    spec = models.ALIASES.get(spec, spec)
    base, layers = models.split_layers(spec)
    if layers:
        return f"the first {layers} decoder layers of: {weights_of(base)}"
    if spec in models.PACKAGED:
        return models.PACKAGED[spec].weights
    return models.KNOWN.get(spec, spec)


# ------------------------------------------------------------------- passes

def _items(plan: dict, seed: int) -> tuple[dict, dict]:
    mc = {}
    for name, n in plan["mc"].items():
        task = T.get(name)
        mc[name] = (task, task.items(n, seed))
    gn = {}
    for name, n in plan["gen"].items():
        items = gen.arithmetic_items(n or 200, seed) if name == "arithmetic" else gen.gsm8k_items()
        if name == "gsm8k" and n is not None and n < len(items):
            keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:n])
            items = [items[i] for i in keep]
        gn[name] = items
    return mc, gn


def _pass(loaded, mc: dict, gn: dict, plan: dict, cfg: EvalConfig) -> dict:
    """Benchmarks + reasoning for the model's current state (base, or one active adapter)."""
    t0 = time.time()
    res = {"mc": {n: t.evaluate(loaded, items, batch_tokens=cfg.batch_tokens, progress=cfg.progress)
                  for n, (t, items) in mc.items()}}
    t1 = time.time()
    res["gen"] = {n: gen.evaluate_gen(loaded, n, items, max_new_tokens=plan["cot_tokens"], progress=cfg.progress)
                  for n, items in gn.items()}
    res["seconds"] = {"tasks": round(t1 - t0, 1), "generation": round(time.time() - t1, 1)}
    return res


def _task_block(base: dict, cur: dict | None, cfg: EvalConfig, domain: str | None = None
                ) -> tuple[dict, dict, dict]:
    """Benchmarks, reasoning and forgetting; forgetting leaves out the tasks of the adapter's own
    domain (for a medical adapter MedMCQA is gain, not forgetting)."""
    kw = dict(seed=cfg.seed, resamples=cfg.bootstrap)
    own = set(drift.DOMAIN_TASKS.get(domain or "", ()))
    tasks, reasoning = {}, {}
    for n, b in base["mc"].items():
        e = {"base": b.summary(**kw), "metric": "acc_norm" if b.acc_norm is not None else "acc"}
        if cur is not None:
            a = cur["mc"][n]
            e["adapter"] = a.summary(**kw)
            e["delta"] = paired_diff_ci(a.main, b.main, seed=cfg.seed, resamples=cfg.bootstrap)
            e["own_domain"] = n in own
            e["items"] = {"ids": list(b.ids), "base": [float(x) for x in b.main],
                          "adapter": [float(x) for x in a.main]}
            if list(a.ids) != list(b.ids):  # one item list serves both passes (_items)
                raise RuntimeError(f"{n}: base and adapter were scored on different items")
        tasks[n] = e
    for n, b in base["gen"].items():
        e = {"base": b.summary(**kw)}
        if cur is not None:
            a = cur["gen"][n]
            e["adapter"] = a.summary(**kw)
            e["delta_cot"] = paired_diff_ci(a.cot, b.cot, seed=cfg.seed, resamples=cfg.bootstrap)
            e["delta_direct"] = paired_diff_ci(a.direct, b.direct, seed=cfg.seed, resamples=cfg.bootstrap)
        reasoning[n] = e
    kept = [n for n in base["mc"] if n not in own]
    forgetting = {"tasks": kept, "excluded_own_domain": [n for n in base["mc"] if n in own],
                  "base_mean": pooled_mean_ci([base["mc"][n].main for n in kept], **kw)}
    if cur is not None:
        forgetting["adapter_mean"] = pooled_mean_ci([cur["mc"][n].main for n in kept], **kw)
        # macro mean of the per-task paired differences, each task resampled on its own items
        forgetting["delta"] = pooled_mean_ci([cur["mc"][n].main - base["mc"][n].main for n in kept], **kw)
    return tasks, reasoning, forgetting


def _contamination(loaded, sets: list[drift.PromptSet], card: dict, recs: list, plan: dict,
                   cfg: EvalConfig, base=None, base_hidden: dict | None = None) -> dict:
    """KL/JS and style leak on every prompt set; `base_hidden` (kept across the adapters of one
    wrapped base) lets the base side of each divergence run once, not once per adapter."""
    domain, trigger = card.get("domain"), card.get("trigger")
    shared = (lambda *k: base_hidden.setdefault(k, {})) if base_hidden is not None else (lambda *k: None)
    lex = drift.lexicon_for(domain, recs)
    out: dict[str, Any] = {"own_domain": domain, "trigger": trigger, "domains": {}}
    leaks = drift.style_leak(loaded, sets, lex, plan["answer_tokens"], seed=cfg.seed) if lex is not None else {}
    for ps in sets:
        d = {"own": ps.domain == domain}
        d.update(drift.divergence(loaded, ps, batch_tokens=cfg.batch_tokens, progress=cfg.progress, seed=cfg.seed,
                                  base=base, base_hidden=shared(ps.domain, None)))
        d["custom"] = ps.domain not in drift.DOMAINS
        if trigger:
            d["with_trigger"] = drift.divergence(loaded, ps, trigger=trigger, batch_tokens=cfg.batch_tokens, base=base,
                                                 progress=cfg.progress, seed=cfg.seed,
                                                 base_hidden=shared(ps.domain, trigger))
        if ps.domain in leaks:
            d["style_leak"] = leaks[ps.domain]
        out["domains"][ps.domain] = d
    foreign = [v for k, v in out["domains"].items() if k != domain]
    if foreign:  # macro mean over foreign domains, each domain's prompts resampled on their own
        kw = dict(seed=cfg.seed, resamples=cfg.bootstrap)
        out["mean_foreign_kl"] = pooled_ratio_ci([(v["items"]["kl"], v["items"]["tokens"]) for v in foreign], **kw)
        if lex is not None:
            out["mean_foreign_leak"] = float(np.mean([v["style_leak"]["leak"]["mean"] for v in foreign]))
    return out


def _card_view(card: dict | None) -> dict:
    card = card or {}
    c = card.get("config") or {}
    keep = ("method", "rank", "alpha", "rslora", "target_modules", "lr", "steps", "epochs", "loss_on", "trigger_mode")
    return {"domain": card.get("domain"), "trigger": card.get("trigger"), "method": card.get("method"),
            "base": card.get("base"), "config": {k: c[k] for k in keep if k in c}}


# --------------------------------------------------------------------- main

def check(cfg: EvalConfig) -> None:
    """Every name and folder the evaluation will need, checked before any model is loaded."""
    problems = []
    unknown = [d for d in cfg.domains if d not in drift.DOMAINS and d not in cfg.domain_data]
    if unknown and cfg.contamination:
        problems.append(f"unknown domain(s) {', '.join(unknown)}: packaged are {', '.join(drift.DOMAINS)}; "
                        "a domain of your own needs a records folder (domain_data NAME: DIR, --domain-data NAME=DIR)")
    for d, f in cfg.domain_data.items():
        if not (Path(f) / "records.jsonl").exists():
            problems.append(f"domain {d!r}: {f} holds no records.jsonl")
    for f in [cfg.eval_data, *cfg.extra_eval.values()]:
        if f and not (Path(f) / "records.jsonl").exists() and not Path(f).is_file():
            problems.append(f"eval data {f} holds no records.jsonl")
    if problems:
        raise UserError("; ".join(problems))


def _overlap_guard(names: list[str], cards: list[dict], recs: list[list], cfg: EvalConfig) -> list[dict | None]:
    """Held-out means held out: evaluated records that trained the adapter are refused, or with
    allow_overlap measured and reported (count in metrics.json, a line on stderr)."""
    import sys

    found = [drift.training_overlap(c, r) if r else None for c, r in zip(cards, recs)]
    bad = [(n, o) for n, o in zip(names, found) if o and o["records"]]
    if bad:
        msg = "; ".join(f"{o['records']} of {o['of']} evaluated records are training examples of adapter {n} "
                        f"(its data {o['training_data']})" for n, o in bad)
        if not cfg.allow_overlap:
            raise UserError(msg + "; evaluate on held-out records (or pass --allow-overlap to measure anyway)")
        print(f"warning: {msg}; in-domain numbers are not held-out", file=sys.stderr)
    return found


def _remember(memo: dict, key: tuple, compute):
    """memo[key], computed on first use."""
    if key not in memo:
        memo[key] = compute()
    return memo[key]


def _records_key(records) -> str:
    import hashlib

    return hashlib.sha256("\n".join(r.model_dump_json() for r in records).encode()).hexdigest()


def evaluate(cfg: EvalConfig, memo: dict | None = None) -> dict:
    """Run the suite on the base once and on every adapter; write metrics.json files.

    `memo`, a dict the caller keeps across evaluations in one process (a study's groups): the
    base model's passes (benchmarks, in-domain losses, prompt sets with greedy answers) are
    kept there under the weights, format, device, seed and settings that produced them, and a
    later evaluation with the same ones reuses them instead of running the base again."""
    from .. import adapters as A
    from .. import models

    check(cfg)
    t0 = time.time()
    plan = cfg.plan()
    folders = [A.resolve_folder(p) for p in cfg.adapters]
    cards = [A.load_card(f) or {} for f in folders]
    recs = [drift.eval_records(c, cfg.eval_data, plan["records"], cfg.seed, mode=cfg.eval_split) for c in cards]
    overlap = _overlap_guard([f.name for f in folders], cards, recs, cfg)
    extra = {k: drift.eval_records(None, v, plan["records"], cfg.seed) for k, v in cfg.extra_eval.items()}
    loaded = models.load(cfg.model, device=cfg.device, dtype=cfg.dtype)
    from ..device import precision_record  # device, format and torch that produced every number below

    head = {"model": {"spec": loaded.spec, "fingerprint": loaded.fingerprint, "dtype": str(loaded.model.dtype),
                      "weights": weights_of(loaded.spec), "precision": precision_record(loaded)},
            "suite": cfg.suite, "plan": {k: v for k, v in plan.items()}, "config": cfg.dump()}
    mc, gn = _items(plan, cfg.seed)
    memo = {} if memo is None else memo
    scope = (loaded.spec, loaded.fingerprint, str(loaded.model.dtype), str(loaded.device), cfg.seed, cfg.batch_tokens)
    base = _remember(memo, ("pass", *scope, repr(sorted(plan.items()))), lambda: _pass(loaded, mc, gn, plan, cfg))

    def losses(rs):  # adapters sharing held-out records share the base's losses
        return _remember(memo, ("losses", *scope, _records_key(rs)),
                         lambda: drift.record_losses(loaded, rs, progress=cfg.progress))

    base_loss = [losses(r) if r else None for r in recs]
    extra_base = {k: losses(r) for k, r in extra.items() if r}
    sets = (_remember(memo, ("sets", *scope, plan["prompts"], plan["answer_tokens"], tuple(cfg.domains),
                             tuple(sorted(cfg.domain_data.items()))),
                      lambda: drift.base_prompt_sets(loaded, plan["prompts"], plan["answer_tokens"], cfg.seed,
                                                     cfg.domains, cfg.domain_data))
            if cfg.contamination and folders else [])
    head["seconds_base"] = round(time.time() - t0, 1)
    is_model = [c.get("kind") == "model" for c in cards]  # full / scratch runs: a whole model folder
    out = Path(cfg.out)
    if not folders:
        tasks, reasoning, forgetting = _task_block(base, None, cfg)
        m = {**head, "tasks": tasks, "reasoning": reasoning, "forgetting": forgetting,
             "timing": {"base": base["seconds"]}, "seconds": round(time.time() - t0, 1)}
        write_json(out / "base" / "metrics.json", m)
        return {"base": m, "adapters": {}}
    all_names = A.adapter_names(folders)  # one naming for adapters and whole models (unique, PEFT-safe)
    results, svd_cache = {}, {}
    ctx = dict(base=base, sets=sets, extra=extra, extra_base=extra_base, mc=mc, gn=gn, plan=plan, cfg=cfg,
               head=head, t0=t0, svd_cache=svd_cache, loaded=loaded, hidden={"plain": {}, "peft": {}})
    entries = list(zip(all_names, folders, cards, recs, base_loss, overlap, is_model))
    # whole models first, while the base is still plain (applying adapters changes its layers in place)
    for name, folder, card, rs, bl, ov, whole in [e for e in entries if e[-1]]:
        other = _load_tuned(folder, loaded, cfg)
        results[name] = _measure(other, name, folder, card, rs, bl, ov, contextlib.nullcontext(), **ctx)
        del other
    adapters_ = [e for e in entries if not e[-1]]
    if adapters_:
        wrapped = A.apply_adapters(loaded, [e[1] for e in adapters_], [e[0] for e in adapters_])
        for name, folder, card, rs, bl, ov, _ in adapters_:
            results[name] = _measure(wrapped, name, folder, card, rs, bl, ov, drift.active(wrapped.model, name), **ctx)
    results = {n: results[n] for n in all_names}
    for name, m in results.items():
        write_json(out / name / "metrics.json", m)
    return {"base": {**head, **dict(zip(("tasks", "reasoning", "forgetting"), _task_block(base, None, cfg)))},
            "adapters": results}


def _load_tuned(folder: Path, base, cfg: EvalConfig):
    """A fully fine-tuned or from-scratch model folder, loaded like the base (same device and
    format), refused when its vocabulary differs from the base's (no paired comparison then)."""
    from .. import models

    other = models.load(str(folder), device=cfg.device, dtype=cfg.dtype)
    if other.tokenizer.get_vocab() != base.tokenizer.get_vocab():
        raise UserError(f"{folder}: its tokenizer differs from the base's; token-level comparisons need the same one")
    return other


def _measure(model, name: str, folder: Path, card: dict, rs, bl, ov, active, *, base, sets, extra, extra_base,
             mc, gn, plan, cfg: EvalConfig, head: dict, t0: float, svd_cache: dict, loaded, hidden: dict) -> dict:
    """Every measurement of one trained model state (an adapter switched on, or a whole model)
    against the base: tasks, in-domain loss, contamination, weights."""
    t1 = time.time()
    kw = dict(seed=cfg.seed, resamples=cfg.bootstrap)
    with active:
        cur = _pass(model, mc, gn, plan, cfg)
        tasks, reasoning, forgetting = _task_block(base, cur, cfg, card.get("domain"))
        m = {**head, "adapter": {"name": name, "path": str(folder), "kind": card.get("kind", "adapter"),
                                 **_card_view(card)},
             "tasks": tasks, "forgetting": forgetting, "reasoning": reasoning,
             "timing": {"base": base["seconds"], "adapter": cur["seconds"]}}
        if rs:
            al = drift.record_losses(model, rs, trigger=card.get("trigger"), progress=cfg.progress)
            m["in_domain"] = {"base": drift.loss_summary(bl, None, **kw),
                              "adapter": drift.loss_summary(al, bl, **kw),
                              "items": {"base": drift.loss_items(bl), "adapter": drift.loss_items(al)},
                              "overlap": ov,
                              "source": cfg.eval_data or (card.get("data") or {}).get("path")}
        for k, bl_k in extra_base.items():  # same adapter, other held-out forms
            al_k = drift.record_losses(model, extra[k], trigger=card.get("trigger"), progress=cfg.progress)
            m.setdefault("in_domain_extra", {})[k] = {
                "base": drift.loss_summary(bl_k, None, **kw), "adapter": drift.loss_summary(al_k, bl_k, **kw),
                "items": {"base": drift.loss_items(bl_k), "adapter": drift.loss_items(al_k)},
                "overlap": drift.training_overlap(card, extra[k]), "source": cfg.extra_eval[k]}
        if sets:
            t2 = time.time()
            whole = card.get("kind") == "model"  # its base side is the plain base, not the adapter switched off
            m["contamination"] = _contamination(model, sets, card, rs, plan, cfg, base=loaded if whole else None,
                                                base_hidden=hidden["plain" if whole else "peft"])
            m["timing"]["contamination"] = round(time.time() - t2, 1)
    if cfg.weights:
        t2 = time.time()
        if card.get("kind") == "model":
            m["weights"] = _model_weights(loaded, model, card, cfg, svd_cache)
        else:
            m["weights"] = _weights(folder, model.model, cfg, svd_cache)
        m["timing"]["weights"] = round(time.time() - t2, 1)
    m["seconds_adapter"] = round(time.time() - t1, 1)
    m["seconds"] = round(time.time() - t0, 1)
    return m


def _model_weights(base, tuned, card: dict, cfg: EvalConfig, svd_cache: dict) -> dict:
    """ΔW of a fully fine-tuned model; a model trained from scratch has no ΔW to the base."""
    from .weights import dense_diagnostics, model_deltas

    if card.get("method") == "scratch" or not (card.get("base") or {}).get("fingerprint"):
        return {"skipped": "trained from scratch: its weights are not a change of the base's"}
    return dense_diagnostics(model_deltas(base.model, tuned.model), base.model, intruder_top_k=cfg.intruder_top_k,
                             threshold=cfg.intruder_threshold,
                             intruders_on=cfg.plan()["intruders"] if cfg.intruders is None else cfg.intruders,
                             svd_cache=svd_cache)


def _weights(folder: Path, model, cfg: EvalConfig, svd_cache: dict) -> dict:
    from .weights import diagnostics

    try:
        return diagnostics(folder, model, intruder_top_k=cfg.intruder_top_k, threshold=cfg.intruder_threshold,
                           intruders_on=cfg.plan()["intruders"] if cfg.intruders is None else cfg.intruders,
                           svd_cache=svd_cache)
    except (ValueError, KeyError, FileNotFoundError) as e:  # e.g. DoRA, or a layer the base lacks
        return {"error": str(e)}
