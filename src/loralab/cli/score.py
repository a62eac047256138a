"""`loralab data score | select | consistency`: parse, call one stage function, print."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ..config import build
from ..errors import UserError
from ..io import claim_output
from .app import data_app, out


def _need(path: Path, what: str = "records folder") -> None:
    if not path.exists():
        raise UserError(f"{path}: no such {what}")
    if path.is_dir() and not (path / "records.jsonl").exists():
        raise UserError(f"{path} is not a records folder (no records.jsonl)")


def _need_adapter(path: str | None, flag: str = "--adapter") -> None:
    if path is None:
        return
    from ..adapters import resolve_folder

    f = resolve_folder(path)
    if not (f / "adapter_config.json").exists():
        raise UserError(f"{flag} {path}: not an adapter folder (no adapter_config.json)")


def _fmt(x, nd: int = 3) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


@data_app.command("score")
def score_cmd(
    records_dir: Path = typer.Argument(..., help="Records folder (records.jsonl) or a .jsonl file."),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder: records with meta.score, quarantine, card."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec (see `loralab models`)."),
    adapter: str = typer.Option(None, "--adapter", "-a", help="PEFT adapter folder to score with."),
    engine: str = typer.Option("local", help="local (in-process) | ray (Ray Data actors)."),
    workers: int = typer.Option(2, help="Ray actors (engine ray)."),
    batch_tokens: Optional[int] = typer.Option(None, help="Padded tokens per forward pass (default 2048 on CPU, 16384 on CUDA)."),
    max_length: int = typer.Option(None, help="Context window in tokens (default: the model's)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 | int8-dynamic (overrides --precision)"),
    precision: str = typer.Option("exact", help="exact (fp32) | fast (the fastest low-precision format measured here that ranks IFD like fp32 on this model; see `loralab doctor`)"),
    render: str = typer.Option("auto", help="auto | chat | plain: how prompted records are shown (auto: chat when the tokenizer has a chat template)."),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the score cache."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Perplexity and IFD (Instruction-Following Difficulty) of every record."""
    from ..models import check_spec
    from ..score import ScoreConfig, score

    cfg = build(ScoreConfig, model=model, adapter=adapter, engine=engine, workers=workers,
                batch_tokens=batch_tokens, max_length=max_length, device=device, dtype=dtype, precision=precision,
                render=render, cache=not no_cache)
    _need(records_dir)
    check_spec(cfg.model)
    _need_adapter(cfg.adapter)
    with claim_output(out_dir, overwrite=overwrite):
        card = score(records_dir, out_dir, cfg)
    c = card["counts"]
    out.print(f"read {c['read']}  kept {c['kept']}  quarantined {c['quarantined']}  "
              f"(from cache {card['from_cache']}, computed {card['computed']}, "
              f"{card['tokens_per_s'] or 0:.0f} tokens/s, {card['precision']['precision']})  -> {out_dir}")
    t = Table(title="score summary")
    for col in ("score", "mean", "p05", "median", "p95"):
        t.add_column(col)
    for k, s in card["summary"].items():
        if s:
            t.add_row(k, _fmt(s["mean"]), _fmt(s["p05"]), _fmt(s["median"]), _fmt(s["p95"]))
    out.print(t)
    for reason, n in card["quarantine_reasons"].items():
        out.print(f"  quarantined {n}: {reason}")


@data_app.command("select")
def select_cmd(
    scored_dir: Path = typer.Argument(..., help="Scored records folder (from `loralab data score`)."),
    policy: list[str] = typer.Option(..., "--policy", "-p", help=(
        "NAME[:ARGS], in order: ifd_topk:PCT, random:PCT, ppl_band:LO,HI[,mode=value], "
        "gibberish_guard[:z=3.5,max_loss=..], diversity:PCT.")),
    out_dir: Path = typer.Option(..., "--out", "-o", help="Output folder."),
    seed: int = typer.Option(0, help="Seed of the random policy."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace --out if it exists."),
) -> None:
    """Keep records by a composable list of policies; every drop is quarantined with its reason."""
    from ..select import SelectConfig, select

    cfg = build(SelectConfig, policies=policy, seed=seed)
    _need(scored_dir, "scored records folder")
    with claim_output(out_dir, overwrite=overwrite):
        card = select(scored_dir, out_dir, cfg)
    t = Table(title=f"selection -> {out_dir}")
    for col in ("policy", "in", "dropped", "kept"):
        t.add_column(col)
    for s in card["policies"]:
        t.add_row(s["policy"], str(s["in"]), str(s["dropped"]), str(s["kept"]))
    out.print(t)
    c = card["counts"]
    out.print(f"read {c['read']}  kept {c['kept']}  quarantined {c['quarantined']}")


@data_app.command("consistency")
def consistency_cmd(
    records_dir: Path = typer.Argument(..., help="Records folder (records.jsonl) or a .jsonl file."),
    model_a: str = typer.Option("smollm2-135m", "--model-a", help="First (e.g. weak) model spec."),
    model_b: str = typer.Option("smollm2-135m", "--model-b", help="Second (e.g. strong) model spec."),
    adapter_a: str = typer.Option(None, "--adapter-a", help="Adapter folder on model A."),
    adapter_b: str = typer.Option(None, "--adapter-b", help="Adapter folder on model B."),
    out_file: Path = typer.Option(Path("consistency.json"), "--out", "-o", help="JSON report path."),
    batch_tokens: Optional[int] = typer.Option(None, help="Padded tokens per forward pass (default 2048 on CPU, 16384 on CUDA)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
    no_cache: bool = typer.Option(False, "--no-cache", help="Neither read nor write the score cache."),
) -> None:
    """Do two scorers agree? Spearman rho of IFD and perplexity, overlap of top-IFD sets."""
    from ..models import check_spec
    from ..score import ScoreConfig, consistency

    common = dict(batch_tokens=batch_tokens, device=device, dtype=dtype, cache=not no_cache)
    cfg_a = build(ScoreConfig, model=model_a, adapter=adapter_a, **common)
    cfg_b = build(ScoreConfig, model=model_b, adapter=adapter_b, **common)
    _need(records_dir)
    for m in (model_a, model_b):
        check_spec(m)
    _need_adapter(adapter_a, "--adapter-a")
    _need_adapter(adapter_b, "--adapter-b")
    rep = consistency(records_dir, cfg_a, cfg_b, out=out_file)
    a, b = rep["model_a"], rep["model_b"]
    t = Table(title=f"A {a['model']}{' + ' + a['adapter'] if a['adapter'] else ''} vs "
                    f"B {b['model']}{' + ' + b['adapter'] if b['adapter'] else ''}  ({rep['n']} records)")
    t.add_column("measure")
    t.add_column("value")
    t.add_column("random expectation")
    for k in ("spearman_ifd", "spearman_ppl"):
        t.add_row(f"{k} (n={rep[k]['n']})", _fmt(rep[k]["rho"]), "0")
    for o in rep["top_overlap"]:
        t.add_row(f"top {o['frac']:.0%} overlap (k={o['k']})", _fmt(o["overlap"]), _fmt(o["random_expectation"]))
    out.print(t)
    out.print(f"saved {out_file}")
