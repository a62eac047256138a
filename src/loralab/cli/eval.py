"""`loralab eval`: parse, call `evaluate.evaluate`, print tables.

    loralab eval --model smollm2-135m --suite quick --out eval/base
    loralab eval --adapter runs/sport --adapter runs/med --suite quick --out eval/ --eval-data data/sport_eval
    loralab eval --adapter runs/sport --rag idx/ --rag-k 2 --out eval/      # + base / base+RAG / adapter / adapter+RAG
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app, fail, out


def _ci(c: dict | None, pct: bool = True, signed: bool = False) -> str:
    if not c or c.get("n", 1) == 0:
        return "-"
    k, f = (100.0, ".1f") if pct else (1.0, ".3f")
    sign = "+" if signed else ""
    return f"{c['mean'] * k:{sign}{f}} [{c['lo'] * k:{sign}{f}}, {c['hi'] * k:{sign}{f}}]"


def tables(res: dict) -> list[Table]:
    """Rich tables of an `evaluate` result: benchmarks, reasoning, gain, contamination, ΔW."""
    base, ads = res["base"], res["adapters"]
    names = list(ads)
    t = Table(title=f"benchmarks ({base['suite']} suite, accuracy % with 95 % CI; Δ = adapter − base, paired)")
    for col in ["task", "n", "metric", "base"] + [f"Δ {n}" for n in names]:
        t.add_column(col)
    for task, e in base["tasks"].items():
        m = e["metric"]
        t.add_row(task, str(e["base"]["n"]), m, _ci(e["base"][m]),
                  *[_ci(ads[n]["tasks"][task]["delta"], signed=True) for n in names])
    f = base["forgetting"]
    t.add_row("mean", "", "", _ci(f["base_mean"]), *[_ci(ads[n]["forgetting"]["delta"], signed=True) for n in names])
    out_t = [t]
    if base["reasoning"]:
        r = Table(title="reasoning (greedy; % correct)")
        for col in ["task", "model", "direct", "step-by-step", "early-answer agreement"]:
            r.add_column(col)
        for task, e in base["reasoning"].items():
            for who, s in [("base", e["base"])] + [(n, ads[n]["reasoning"][task]["adapter"]) for n in names]:
                r.add_row(task, who, _ci(s["direct_acc"]), _ci(s["cot_acc"]), _ci(s["early_agreement"]))
        out_t.append(r)
    if any("in_domain" in ads[n] for n in names):
        g = Table(title="in-domain held-out loss (nats/token)")
        for col in ("adapter", "records", "base loss", "adapter loss", "base ppl", "adapter ppl", "Δ loss [CI]",
                    "trained on"):
            g.add_column(col)
        for n in names:
            d = ads[n].get("in_domain")
            if d:
                ov = d.get("overlap") or {}
                g.add_row(n, str(d["adapter"]["records"]), f"{d['base']['loss']:.3f}", f"{d['adapter']['loss']:.3f}",
                          f"{d['base']['ppl']:.1f}", f"{d['adapter']['ppl']:.1f}",
                          _ci(d["adapter"]["delta_vs_base"], pct=False, signed=True),
                          f"[bold red]{ov['records']} of {ov['of']}[/]" if ov.get("records") else
                          ("0" if ov else "unknown"))
        out_t.append(g)
    if any("contamination" in ads[n] for n in names):
        doms = list(next(ads[n]["contamination"]["domains"] for n in names if "contamination" in ads[n]))
        c = Table(title="contamination: KL(base‖adapter) nats/token [95% CI] · JS · style leak (pp)")
        for col in ["adapter"] + doms:
            c.add_column(col)
        for n in names:
            cm = ads[n].get("contamination")
            if cm:
                cells = []
                for d in doms:
                    v = cm["domains"][d]
                    leak = v.get("style_leak", {}).get("leak", {}).get("mean")
                    cells.append(f"{_ci(v.get('kl_ci'), pct=False)} · {v['js']:.3f}"
                                 + (f" · {leak * 100:+.1f}" if leak is not None else "")
                                 + (" (own)" if v["own"] else ""))
                c.add_row(n, *cells)
        out_t.append(c)
    if any("weights" in ads[n] for n in names):
        w = Table(title="ΔW diagnostics")
        for col in ("adapter", "modules", "‖ΔW‖ total", "mean ‖ΔW‖/‖W‖", "max ‖ΔW‖/‖W‖", "mean erank", "intruders"):
            w.add_column(col)
        for n in names:
            s = ads[n].get("weights", {}).get("summary")
            if s and s.get("modules"):
                w.add_row(n, str(s["modules"]), f"{s['total_norm']:.3f}", f"{s['mean_rel_norm']:.4f}",
                          f"{s['max_rel_norm']:.4f}", f"{s['mean_erank']:.2f}", str(s.get("intruders", "-")))
        out_t.append(w)
    return out_t


def _names(csv: str | None) -> list[str] | None:
    if csv is None:
        return None
    return [] if csv.strip().lower() == "none" else [x.strip() for x in csv.split(",") if x.strip()]


@app.command("eval")
def eval_cmd(
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Base model spec (see `loralab models`)."),
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="Adapter folder(s); the base is scored once."),
    suite: str = typer.Option("quick", help="quick (seeded subsets) | full (full sets)."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder: <adapter>/metrics.json (or base/)."),
    eval_data: str = typer.Option(None, "--eval-data", help="Records folder for in-domain loss (its eval split "
                                  "unless it is a held-out folder; see --eval-split)."),
    eval_split: str = typer.Option("auto", "--eval-split", help="auto (held-out folder whole, else its eval "
                                   "split) | all (every record)."),
    allow_overlap: bool = typer.Option(False, "--allow-overlap", help="Measure even when evaluated records "
                                       "trained the adapter (the overlap is reported); default: refuse."),
    domains: str = typer.Option(None, "--domains", help="Comma-separated contamination domains (default: "
                                "the packaged ones)."),
    domain_data: list[str] = typer.Option([], "--domain-data", help="NAME=DIR: a domain of your own and the "
                                          "records folder its prompts come from (joins the domains)."),
    tasks: str = typer.Option(None, help="Comma-separated multiple-choice tasks instead of the suite's."),
    limit: int = typer.Option(None, help="Items per task (overrides the suite)."),
    gen_tasks: str = typer.Option(None, "--gen-tasks", help="Comma-separated: arithmetic, gsm8k; 'none' for none."),
    prompts: int = typer.Option(None, help="Contamination prompts per domain (overrides the suite)."),
    no_contamination: bool = typer.Option(False, "--no-contamination", help="Skip the KL/JS/style-leak matrix."),
    no_weights: bool = typer.Option(False, "--no-weights", help="Skip ΔW diagnostics."),
    seed: int = typer.Option(0, help="Seed of subsets, prompts and bootstrap."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    rag: Path = typer.Option(None, "--rag", help="Index folder (`loralab rag index`): also answer DROP questions "
                             "about its documents the adapter never trained on four ways (base, base+RAG, "
                             "adapter, adapter+RAG) -> <adapter>/rag.json."),
    rag_k: int = typer.Option(3, "--rag-k", min=1, help="Passages per question."),
    rag_limit: int = typer.Option(60, "--rag-limit", min=1, help="Questions (seeded subset)."),
    rag_prompts: int = typer.Option(20, "--rag-prompts", min=0, help="Foreign (medical) prompts for "
                                    "contamination under each condition."),
) -> None:
    """Gain, forgetting, reasoning, contamination and ΔW of adapters against their base."""
    from .. import models
    from ..config import ConfigError
    from ..evaluate import EvalConfig, evaluate

    dd = {}
    for item in domain_data:
        name, sep, folder = item.partition("=")
        if not sep or not name.strip() or not folder.strip():
            fail(f"--domain-data takes NAME=DIR, got {item!r}")
        dd[name.strip()] = folder.strip()
    if rag is not None and len(adapter) != 1:
        fail("--rag takes exactly one --adapter (the four conditions are paired on its questions)")
    doms = _names(domains)
    if doms is None:
        from ..evaluate.drift import DOMAINS

        doms = list(DOMAINS)
    doms += [d for d in dd if d not in doms]
    try:
        cfg = EvalConfig(model=model, adapters=adapter, suite=suite, out=str(out_dir), eval_data=eval_data,
                         eval_split=eval_split, allow_overlap=allow_overlap, domains=doms, domain_data=dd,
                         tasks=_names(tasks), limit=limit,
                         gen_tasks=_names(gen_tasks), prompts=prompts,
                         contamination=not no_contamination, weights=not no_weights, seed=seed,
                         device=device, dtype=dtype)
        res = evaluate(cfg)
    except (models.ModelError, ConfigError, ValueError, KeyError, FileNotFoundError, RuntimeError) as e:
        fail(str(e))
    for t in tables(res):
        out.print(t)
    out.print(f"weights: {res['base']['model']['weights']}")
    where = [out_dir / n / "metrics.json" for n in res["adapters"]] or [out_dir / "base" / "metrics.json"]
    if rag is not None:
        where.append(_rag(model, adapter[0], rag, out_dir / next(iter(res["adapters"])), rag_k, rag_limit,
                          rag_prompts, seed, device, dtype))
    out.print("wrote " + ", ".join(str(w) for w in where))


def _rag(model, adapter, index, folder: Path, k, limit, prompts, seed, device, dtype) -> Path:
    from ..io import write_json
    from ..ragstudy import eval_adapter, table

    res = eval_adapter(model, adapter, index, k=k, limit=limit, prompts=prompts, seed=seed, device=device,
                       dtype=dtype)
    out.print(f"LoRA + RAG: {res['n_questions']} DROP questions about {res['index']['unseen_documents']} documents "
              f"of {index} the adapter never trained on, k = {k}")
    out.print(table(res))
    out.print(res["finding"])
    write_json(folder / "rag.json", res)
    return folder / "rag.json"
