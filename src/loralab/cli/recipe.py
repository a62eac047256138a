"""`loralab data recipe ...` and `loralab metacog ...`: thinking-event data, metrics, study.

    loralab data recipe self-correction --out data/metacog --n 200 [--ratios self_correction=0.4,...]
    loralab data recipe epistemic --style assumptions --out data/epi.assumptions
    loralab data recipe anchor --out data/anchor --n 200
    loralab metacog eval --adapter runs/sport:1 --adapter runs/metacog:0.5 --n 60 --out eval/metacog
    loralab metacog study studies/metacog.yaml --out runs/metacog
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app, data_app, fail, out

recipe_app = typer.Typer(no_args_is_help=True, help="Records written from checkable items (verified traces).")
metacog_app = typer.Typer(no_args_is_help=True, help="Thinking-event metrics of adapters and their compositions.")
data_app.add_typer(recipe_app, name="recipe")
app.add_typer(metacog_app, name="metacog")

SOURCES_HELP = "Item sources, comma-separated: arith, gsm8k, logic, arc, sciq."


def _sources(text: str) -> list[str]:
    from ..data.recipes.items import SOURCES

    got = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in got if s not in SOURCES]
    if bad or not got:
        fail(f"unknown item source(s) {', '.join(bad) or '(none)'}; known: {', '.join(SOURCES)}")
    return got


def _report(card: dict, out_dir: Path) -> None:
    from ..data.ledger import reasons_table, reconciliation_table

    s = card["reconciliation"]
    out.print(reconciliation_table(s))
    if s["quarantine_reasons"]:
        out.print(reasons_table(s))
    r = card["recipe"]
    t = Table(title=f"{r['name']}: records by kind and origin")
    for c in ("kind", "target", "kept", "origins", "quarantined"):
        t.add_column(c, justify="left" if c in ("kind", "origins") else "right")
    for k in dict.fromkeys(list(r.get("targets", {})) + list(r["by_kind_origin"])):
        c = r["by_kind_origin"].get(k, {})
        t.add_row(k, str(r.get("targets", {}).get(k, "")), str(r["by_kind"].get(k, 0)),
                  ", ".join(f"{o} {v}" for o, v in c.items() if o != "quarantined"), str(c.get("quarantined", 0)))
    out.print(t)
    if "model_attempts" in r and r["model_attempts"]["per_item"]:
        a = r["model_attempts"]
        out.print(f"model attempts ({a['per_item']} per item): right {a['right']}, wrong {a['wrong']}, "
                  f"no answer {a['no_answer']}")
    if not card["checks"]["balanced"]:
        fail("reconciliation does not balance (read != kept + quarantined); this is a bug", code=3)
    out.print(f"role for training: {card['role'] or '(none: anchor)'}; wrote {out_dir}")
    if card["records"]["total"] == 0:
        fail("no verified records", code=1)


@recipe_app.command("self-correction")
def self_correction_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model whose attempts are sampled."),
    n: int = typer.Option(100, min=1, help="Items (one trace each)."),
    ratios: str = typer.Option(None, help="KIND=SHARE,... over self_correction, restart, insight, right_first."),
    sources: str = typer.Option("arith,gsm8k,logic,arc,sciq", help=SOURCES_HELP),
    attempts: int = typer.Option(2, min=0, help="Model attempts per item (first greedy, the rest sampled)."),
    max_new_tokens: int = typer.Option(128, min=8, help="Longest attempt, in tokens."),
    seed: int = typer.Option(0, help="Seed of items, sampling, kinds and synthetic errors."),
) -> None:
    """Verified traces: wrong -> check -> correction, restart, insight, right first time."""
    from pydantic import ValidationError

    from ..data.recipes.selfcorrect import SelfCorrectionConfig, parse_ratios, self_correction

    try:
        kw = {"ratios": parse_ratios(ratios)} if ratios else {}
        cfg = SelfCorrectionConfig(model=model, n=n, sources=_sources(sources), attempts=attempts,
                                   max_new_tokens=max_new_tokens, seed=seed, **kw)
    except ValidationError as e:
        fail("; ".join(x["msg"].removeprefix("Value error, ") for x in e.errors()))
    except ValueError as e:
        fail(str(e))
    _report(self_correction(out_dir, cfg), out_dir)


@recipe_app.command("epistemic")
def epistemic_cmd(
    style: str = typer.Option(..., help="assumptions | estimate"),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    n: int = typer.Option(100, min=1, help="Items."),
    sources: str = typer.Option("arith,gsm8k,logic,arc,sciq", help=SOURCES_HELP),
    seed: int = typer.Option(0, help="Seed of the items (the same seed gives the same items for every style)."),
) -> None:
    """One reasoning style on the items, for its own adapter (role epistemic)."""
    from ..data.recipes.epistemic import STYLES, RecipeConfig, epistemic

    if style not in STYLES:
        fail(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    _report(epistemic(out_dir, style, RecipeConfig(n=n, sources=_sources(sources), seed=seed)), out_dir)


@recipe_app.command("anchor")
def anchor_cmd(
    out_dir: Path = typer.Option(..., "--out", "-o", help="Records folder to write."),
    n: int = typer.Option(200, min=1, help="Items."),
    sources: str = typer.Option("arith,logic", help=SOURCES_HELP),
    seed: int = typer.Option(0, help="Seed of the items."),
) -> None:
    """Verified arithmetic / logic items for `loralab train --replay DIR [--kl-weight λ]`."""
    from ..data.recipes.epistemic import RecipeConfig, anchor

    _report(anchor(out_dir, RecipeConfig(n=n, sources=_sources(sources), seed=seed)), out_dir)


# ------------------------------------------------------------------ metacog

def _pct(c: dict, signed: bool = False) -> str:
    if not c or not c.get("n"):
        return "-"
    s = "+" if signed else ""
    return f"{c['mean'] * 100:{s}.1f} [{c['lo'] * 100:{s}.1f}, {c['hi'] * 100:{s}.1f}]"


def metacog_table(res: dict) -> Table:
    t = Table(title=f"held-out checkable items (n={res['items']['n']}); % with 95 % CI; Δ vs base paired, Holm p")
    for c in ("model", "final acc", "Δ final", "p_holm", "self-corr", "false-corr", "restart", "tokens"):
        t.add_column(c)
    for name, m in res["models"].items():
        d = res["vs_base"].get(name, {}).get("final_right")
        t.add_row(name, _pct(m["final_right"]), _pct(d, True) if d else "-", f"{d['p_holm']:.2f}" if d else "-",
                  _pct(m["self_corrected"]), _pct(m["false_corrected"]), _pct(m["restart"]),
                  f"{m['length']['mean']:.0f}")
    return t


@metacog_app.command("eval")
def eval_cmd(
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="PATH[:weight]; several compose into one model."),
    each: bool = typer.Option(False, "--each", help="Measure each --adapter alone too (besides the composition)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Base model spec."),
    n: int = typer.Option(60, min=1, help="Held-out items."),
    sources: str = typer.Option("arith,gsm8k,logic,arc,sciq", help=SOURCES_HELP),
    max_new_tokens: int = typer.Option(160, min=8, help="Longest reply, in tokens."),
    out_dir: Path = typer.Option(None, "--out", "-o", help="Folder for metrics.json and replies.jsonl."),
    seed: int = typer.Option(0, help="Seed of items and bootstrap."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
) -> None:
    """Final accuracy, self-/false-correction, restarts and length: base vs the composition."""
    from ..compose import describe, parse_specs
    from ..evaluate.metacog import MetacogConfig, evaluate_metacog

    specs = parse_specs(adapter)
    missing = [p for p, _ in specs if not Path(p).exists()]
    if missing:
        fail(f"no such adapter folder: {', '.join(missing)}")
    comps = {}
    if each and len(specs) > 1:
        comps.update({describe([s]): [f"{p}:{w}"] for s in specs for p, w in [s]})
    if specs:
        comps[describe(specs)] = [f"{p}:{w}" for p, w in specs]
    cfg = MetacogConfig(model=model, compositions=comps, n=n, sources=_sources(sources), seed=seed,
                        max_new_tokens=max_new_tokens, out=str(out_dir) if out_dir else None, device=device,
                        dtype=dtype)
    try:
        res = evaluate_metacog(cfg)
    except (KeyError, ValueError) as e:
        fail(str(e))
    out.print(metacog_table(res))
    if out_dir:
        out.print(f"wrote {out_dir}/metrics.json")


@metacog_app.command("study")
def study_cmd(
    spec: Path = typer.Argument(..., help="Study spec (studies/metacog.yaml)."),
    out_dir: Path = typer.Option(None, "--out", "-o", help="Study folder (default runs/<name>)."),
) -> None:
    """Base vs metacognitive vs sport vs sport + metacognitive, and forgetting with/without the anchor."""
    from ..study.metacog import load_spec, run_study

    s = load_spec(spec)
    root = out_dir or Path("runs") / s.name
    res = run_study(s, root)
    out.print((root / "results.md").read_text(encoding="utf-8"))
    out.print(f"wrote {root}/results.json ({res['seconds']['total']:.0f} s)")
