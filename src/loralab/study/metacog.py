"""The metacognition study: `loralab metacog study studies/metacog.yaml`.

    loralab metacog study studies/metacog.yaml --out runs/metacog

One linear recipe (it does not go through the generic study runner, whose data steps
start from ingested files; these records are written by recipes):

  data    self-correction traces (recipe, the base model's own attempts + synthetic
          ones), the math-first anchor (recipe), and sport Q&A (NFL passages ->
          template Q&A, as in the quickstart)
  train   metacog adapter (role metacognitive), sport adapter (knowledge), and the
          sport adapter again with anchor replay + KL (same data, steps and seed)
  eval    on held-out checkable items (never in any recipe's records): base, metacog,
          sport, sport + metacog (composed by weights), sport + anchor -> final accuracy,
          self- and false-correction, restart rate, length, paired against the base;
          forgetting: log-likelihood accuracy on a general multiple-choice task (ARC-Easy)
          for base, sport and sport + anchor, paired

Every step writes its folder under --out and is skipped when that folder is complete,
so an interrupted study resumes. `results.md` holds the tables and the findings,
written from the numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .. import safeyaml
from ..errors import UserError
from ..io import read_json, write_json


class MetacogStudy(BaseModel):
    """studies/metacog.yaml."""

    model_config = ConfigDict(extra="forbid")
    name: str = "metacog"
    description: str = ""
    model: str = Field("smollm2-135m", description="Base model spec.")
    seed: int = 0
    recipe: dict[str, Any] = Field(default_factory=dict, description="SelfCorrectionConfig fields.")
    anchor: dict[str, Any] = Field(default_factory=dict, description="Anchor RecipeConfig fields.")
    sport: dict[str, Any] = Field(default_factory=lambda: {"sources": ["olmo:drop-nfl"], "limit": 40},
                                  description="Sport data: ingest sources, limit, chunk_tokens; structure (template Q&A).")
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields shared by every adapter.")
    anchor_train: dict[str, Any] = Field(default_factory=lambda: {"replay_frac": 0.25, "kl_weight": 0.1},
                                         description="TrainConfig fields added for the sport + anchor adapter.")
    eval: dict[str, Any] = Field(default_factory=dict, description="MetacogConfig fields (n, sources, ...).")
    measure: list[str] = Field(["metacog", "sport", "sport+metacog", "sport+anchor"],
                               description="Model states measured on the checkable items besides the base.")
    forgetting: dict[str, int] = Field(default_factory=lambda: {"arc_easy": 60},
                                       description="Multiple-choice task -> items, for forgetting.")


def load_spec(path: str | Path) -> MetacogStudy:
    try:
        raw = safeyaml.load(Path(path).read_bytes()) or {}
        return MetacogStudy.model_validate(raw)
    except (OSError, ValueError) as e:  # safeyaml.YamlError is a ValueError
        raise UserError(f"cannot use study spec {path}: {str(e).splitlines()[0]}") from e


def _done(folder: Path, marker: str) -> bool:
    return (folder / marker).exists()


def _train(spec: MetacogStudy, data: Path, out: Path, role: str | None, **extra) -> None:
    from ..config import TrainConfig
    from ..train import train

    if _done(out, "adapter/loralab.json"):
        return
    fields = {"model": spec.model, "data": str(data), "out": str(out), "seed": spec.seed, **spec.train, **extra}
    if role and "role" in TrainConfig.model_fields:
        fields["role"] = role
    train(TrainConfig(**fields), resume=out.exists(), progress=False)  # an interrupted run resumes


def build(spec: MetacogStudy, root: Path) -> dict[str, Path]:
    """Data and adapters (each skipped when already complete); their folders by name."""
    from ..data.ingest import IngestConfig, ingest
    from ..data.recipes.epistemic import RecipeConfig, anchor
    from ..data.recipes.selfcorrect import SelfCorrectionConfig, self_correction
    from ..data.structure import StructureConfig, structure

    d = {k: root / "data" / k for k in ("metacog", "anchor", "sport_raw", "sport")}
    if not _done(d["metacog"], "data_card.json"):
        self_correction(d["metacog"], SelfCorrectionConfig(**{"model": spec.model, "seed": spec.seed, **spec.recipe}))
    if not _done(d["anchor"], "data_card.json"):
        anchor(d["anchor"], RecipeConfig(**{"sources": ["arith", "logic"], "seed": spec.seed, **spec.anchor}))
    if not _done(d["sport"], "data_card.json"):
        ingest(spec.sport["sources"], d["sport_raw"], IngestConfig(
            domain="sport", limit=spec.sport.get("limit"), chunk_tokens=spec.sport.get("chunk_tokens", 192),
            seed=spec.seed))
        structure(d["sport_raw"], d["sport"], StructureConfig(mode="template", **spec.sport.get("structure", {})))
    r = {k: root / "runs" / k for k in ("metacog", "sport", "sport_anchor")}
    _train(spec, d["metacog"], r["metacog"], "metacognitive")
    _train(spec, d["sport"], r["sport"], "knowledge")
    _train(spec, d["sport"], r["sport_anchor"], "knowledge", replay=str(d["anchor"]), **spec.anchor_train)
    return {**d, **{f"run_{k}": v for k, v in r.items()}}


def forgetting(spec: MetacogStudy, paths: dict[str, Path], loaded) -> dict:
    """Multiple-choice accuracy of base, sport, sport + anchor on the same items (paired)."""
    from ..adapters import apply_adapters, peft_model
    from ..compose import set_weights
    from ..evaluate import tasks as T
    from ..evaluate.stats import bootstrap_ci, holm, paired_diff_ci

    out: dict[str, Any] = {}
    for name, n in spec.forgetting.items():
        task = T.get(name)
        its = task.items(n, spec.seed)
        base = task.evaluate(loaded, its, progress=False).main
        both = apply_adapters(loaded, [paths["run_sport"], paths["run_sport_anchor"]], names=["sport", "sport_anchor"])
        res = {"n": len(its), "base": bootstrap_ci(base, seed=spec.seed)}
        for who in ("sport", "sport_anchor"):
            set_weights(both.model, {who: 1.0})
            acc = task.evaluate(both, its, progress=False).main
            res[who] = bootstrap_ci(acc, seed=spec.seed)
            res[f"delta_{who}"] = paired_diff_ci(acc, base, seed=spec.seed)
        both.model = peft_model(both.model).unload()  # the base weights again, for the next task
        loaded = both
        out[name] = res
    ps = [(t, w) for t in out for w in ("delta_sport", "delta_sport_anchor")]
    for (t, w), adj in zip(ps, holm([out[t][w]["p"] for t, w in ps])):
        out[t][w]["p_holm"] = adj
    return out


def run_study(spec: MetacogStudy, root: str | Path) -> dict:
    """Build, train and evaluate; writes results.json and results.md under `root`."""
    from .. import models
    from ..evaluate.metacog import MetacogConfig, evaluate_metacog

    root = Path(root)
    t0 = time.time()
    paths = build(spec, root)
    t_build = time.time() - t0
    ev_dir = root / "eval"
    comps = {"metacog": [f"{paths['run_metacog']}:1"], "sport": [f"{paths['run_sport']}:1"],
             "sport+metacog": [f"{paths['run_sport']}:1", f"{paths['run_metacog']}:1"],
             "sport+anchor": [f"{paths['run_sport_anchor']}:1"]}
    unknown = [k for k in spec.measure if k not in comps]
    if unknown:
        raise UserError(f"measure: unknown model state(s) {', '.join(unknown)}; known: {', '.join(comps)}")
    comps = {k: comps[k] for k in spec.measure}
    if _done(ev_dir, "metrics.json"):
        meta = read_json(ev_dir / "metrics.json")
    else:
        cfg = MetacogConfig(**{"model": spec.model, "seed": spec.seed, "progress": False, **spec.eval,
                               "compositions": comps, "out": str(ev_dir)})
        meta = evaluate_metacog(cfg)
    fpath = root / "forgetting.json"
    if fpath.exists():
        forget = read_json(fpath)
    else:
        forget = forgetting(spec, paths, models.load(spec.model))
        write_json(fpath, forget)
    res = {"spec": spec.model_dump(), "metacog": meta, "forgetting": forget,
           "data": {k: (read_json(paths[k] / "data_card.json") or {}).get("recipe") for k in ("metacog", "anchor")},
           "seconds": {"build": round(t_build, 1), "total": round(time.time() - t0, 1)}}
    write_json(root / "results.json", res)
    (root / "results.md").write_text(report(res), encoding="utf-8")
    return res


# ------------------------------------------------------------------ report

def _ci(c: dict, k: float = 100, signed: bool = False) -> str:
    if not c or not c.get("n"):
        return "–"
    s = "+" if signed else ""
    return f"{c['mean'] * k:{s}.1f} [{c['lo'] * k:{s}.1f}, {c['hi'] * k:{s}.1f}]"


def report(res: dict) -> str:
    """Markdown tables and findings computed from the numbers."""
    m = res["metacog"]
    models_, vs = m["models"], m["vs_base"]
    n = m["items"]["n"]
    lines = [f"Held-out checkable items: {n} ({', '.join(f'{k} {v}' for k, v in m['items']['by_source'].items())}); "
             f"greedy; % of items with 95 % bootstrap CI; Δ vs base paired, Holm-adjusted p.", "",
             "| model | final accuracy | Δ final vs base (p_holm) | self-correction | false-correction | restart | "
             "tokens |", "|---|---|---|---|---|---|---|"]
    for name, s in models_.items():
        d = vs.get(name, {}).get("final_right")
        dtxt = f"{_ci(d, signed=True)} (p={d['p_holm']:.2f})" if d else "–"
        lines.append(f"| {name} | {_ci(s['final_right'])} | {dtxt} | {_ci(s['self_corrected'])} | "
                     f"{_ci(s['false_corrected'])} | {_ci(s['restart'])} | {s['length']['mean']:.0f} |")
    lines += ["", "Forgetting (log-likelihood accuracy %, same items; Δ paired vs base, Holm-adjusted p):", "",
              "| task | n | base | sport | Δ sport | sport + anchor | Δ sport + anchor |", "|---|---|---|---|---|---|---|"]
    for t, f in res["forgetting"].items():
        lines.append(f"| {t} | {f['n']} | {_ci(f['base'])} | {_ci(f['sport'])} | {_ci(f['delta_sport'], signed=True)} "
                     f"(p={f['delta_sport']['p_holm']:.2f}) | {_ci(f['sport_anchor'])} | "
                     f"{_ci(f['delta_sport_anchor'], signed=True)} (p={f['delta_sport_anchor']['p_holm']:.2f}) |")
    lines += ["", "Findings:", ""] + [f"- {x}" for x in findings(res)]
    return "\n".join(lines) + "\n"


def _verdict(d: dict, what: str) -> str:
    sig = d["p_holm"] < 0.05
    direction = "raises it by" if d["mean"] > 0 else "lowers it by" if d["mean"] < 0 else "leaves it at"
    return (f"{what} {direction} {d['mean'] * 100:+.1f} points [{d['lo'] * 100:+.1f}, {d['hi'] * 100:+.1f}]"
            + ("" if sig else " — not distinguishable from no change at this size (p_holm "
               f"{d['p_holm']:.2f})"))


def findings(res: dict) -> list[str]:
    m = res["metacog"]
    vs, mods = m["vs_base"], m["models"]
    out = []
    for name, what in (("metacog", "the metacognitive adapter"), ("sport+metacog", "sport + metacognitive"),
                       ("sport", "the sport adapter"), ("sport+anchor", "the sport adapter trained with the anchor")):
        if name in vs:
            out.append(f"Final accuracy (base {mods['base']['final_right']['mean'] * 100:.1f} %): "
                       + _verdict(vs[name]["final_right"], what) + ".")
    if "metacog" in vs:
        sc, fc = vs["metacog"]["self_corrected"], vs["metacog"]["false_corrected"]
        out.append(f"Self-correction (first wrong, final right): base {mods['base']['self_corrected']['mean'] * 100:.1f} "
                   f"%, metacognitive {mods['metacog']['self_corrected']['mean'] * 100:.1f} % (Δ {sc['mean'] * 100:+.1f}"
                   f", p_holm {sc['p_holm']:.2f}); false correction (first right, final wrong): Δ "
                   f"{fc['mean'] * 100:+.1f} (p_holm {fc['p_holm']:.2f}).")
    for t, f in res["forgetting"].items():
        a, b = f["delta_sport"], f["delta_sport_anchor"]
        better = "less" if b["mean"] > a["mean"] else "more" if b["mean"] < a["mean"] else "as much"
        out.append(f"Forgetting on {t}: sport {a['mean'] * 100:+.1f} points, sport + anchor {b['mean'] * 100:+.1f} "
                   f"— the anchor forgets {better} here, but neither change is distinguishable from 0 "
                   f"(p_holm {a['p_holm']:.2f}, {b['p_holm']:.2f})" if min(a["p_holm"], b["p_holm"]) >= 0.05 else
                   f"Forgetting on {t}: sport {a['mean'] * 100:+.1f} points (p_holm {a['p_holm']:.2f}), sport + anchor "
                   f"{b['mean'] * 100:+.1f} (p_holm {b['p_holm']:.2f}): the anchor forgets {better}.")
    return out
