"""`loralab merge`: parse, call `merge.merge(cfg)` (and, with --eval, the drift comparison), print.

    loralab merge runs/sport runs/medical --method ties --density 0.5 --full --out merged/ties   # OUT/full: TIES exactly
    loralab merge runs/sport runs/medical --method ties --density 0.5 --rank 64 --out merged/ties64  # a truncated adapter
    loralab merge runs/sport runs/medical --method slerp --t 0.3 --out merged/slerp --full --eval
    loralab merge models/a models/b --base models/base --method dare_ties --drop 0.7 --seed 1 --out merged/m
"""

from __future__ import annotations

from typing import Optional

import typer

from .app import app, fail, out


def _weights(raw: list[str]) -> list[float] | None:
    vals = [x for r in raw for x in r.split(",") if x.strip()]
    try:
        return [float(x) for x in vals] or None
    except ValueError:
        fail(f"--weights: numbers expected, got {', '.join(vals)}")


@app.command("merge")
def merge_cmd(
    parents: list[str] = typer.Argument(..., help="Adapter folders (or run folders), or HF model folders."),
    method: str = typer.Option("linear", "--method", "-m",
                               help="linear | cat | svd | ties | dare_linear | dare_ties | slerp | magnitude"),
    weights: list[str] = typer.Option([], "--weights", "-w", help="One weight per parent (repeat or comma-separate)."),
    out_dir: str = typer.Option(..., "--out", "-o", help="Output folder."),
    rank: Optional[int] = typer.Option(None, help="Rank of the written adapter (not cat); default: exact for "
                                       "linear, the smallest within --max-error for ties / dare / magnitude."),
    max_error: Optional[float] = typer.Option(None, help="Default-rank merges: relative Frobenius error allowed "
                                              "per module (default 0.01)."),
    threads: Optional[int] = typer.Option(None, help="CPU threads for the SVDs (default: measured here)."),
    density: Optional[float] = typer.Option(None, help="ties / magnitude: fraction kept by |value|."),
    drop: Optional[float] = typer.Option(None, help="dare: drop rate (default 0.5)."),
    sign: Optional[str] = typer.Option(None, help="ties / dare_ties sign election: sum | count."),
    rescale: Optional[str] = typer.Option(None, help="dare: inverse | l1 | none."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize",
                                             help="ties-family: divide by Σ w over agreeing parents."),
    t: Optional[float] = typer.Option(None, help="slerp position (0 = first parent, 1 = second)."),
    seed: Optional[int] = typer.Option(None, help="dare: seed of the drop masks."),
    base: Optional[str] = typer.Option(None, help="Model parents: base model folder."),
    full: bool = typer.Option(False, "--full", help="Adapters: also write OUT/full/ (base + merge, safetensors)."),
    model: Optional[str] = typer.Option(None, help="--full / --eval: base model spec (default: the parents' card)."),
    dtype: Optional[str] = typer.Option(None, help="Written dtype: float32 | bfloat16 | float16."),
    device: Optional[str] = typer.Option(None, help="Where the arithmetic runs: cpu | cuda[:N] | auto."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
    evaluate: bool = typer.Option(False, "--eval", help="Drift evaluation of the merge and its parents."),
    suite: str = typer.Option("quick", help="--eval suite: quick | full."),
    eval_out: Optional[str] = typer.Option(None, help="--eval output folder (default OUT-eval)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Merge adapters (or full models) into a new adapter folder, and optionally measure it."""
    from ..config import load_config
    from ..merge import MergeConfig, merge

    flags = dict(parents=parents, method=method, weights=_weights(weights), out=out_dir, rank=rank, density=density,
                 drop=drop, sign=sign, rescale=rescale, normalize=normalize, t=t, seed=seed, base=base, full=full,
                 max_error=max_error, threads=threads, model=model, dtype=dtype, device=device, overwrite=overwrite or None)
    cfg = load_config(MergeConfig, None, **flags)  # mistakes are UserErrors: one line, exit 2 (app.boundary)
    card = merge(cfg)
    m = card["merge"]
    how = f"t {cfg.t:g}" if m["weights"] is None else f"weights {', '.join(f'{w:g}' for w in m['weights'])}"
    out.print(f"merged {len(cfg.parents)} {card['kind']}s by {cfg.method} ({how}) -> {cfg.out}")
    th = m.get("threads") or {}
    if th.get("threads"):
        timed = ", ".join(f"{k} thread(s) {v:.3f} s" for k, v in (th.get("svd_seconds") or {}).items())
        out.print(f"SVDs on {th['threads']} thread(s)" + (f" (one SVD timed here: {timed})" if timed else ""))
    if "svd" in m:
        s = m["svd"]
        out.print(f"rank {s['rank']} ({s['rank_rule']}): relative Frobenius error {s['rel_error']:.3g} overall, "
                  f"{s['max_rel_error']:.3g} at worst; exact rank of the merged deltas up to {s['max_numeric_rank']}")
    elif card["kind"] == "adapter":
        out.print(f"rank {m['rank']} (exact)")
    if cfg.full:
        out.print(f"wrote {cfg.out}/full (base + merged deltas)")
    if not evaluate:
        return
    from ..study.merging import evaluate_merge

    res = evaluate_merge(cfg.out, cfg.parents, out=eval_out or f"{cfg.out.rstrip('/')}-eval", suite=suite,
                         model=model, progress=not quiet)
    from rich.table import Table

    tab = Table(title=f"merge vs parents ({suite} suite; ↑ higher is better, ↓ lower)")
    for col in ["metric", "merge", *res["parents"], "beats both", "merge − parent [95% CI], Holm p"]:
        tab.add_column(col)
    for r in res["rows"]:
        diffs = "; ".join("n/a" if d is None else f"{d['mean']:+.4f} [{d['lo']:+.4f}, {d['hi']:+.4f}] "
                          f"p={d.get('p_holm', float('nan')):.3f}" for d in r["diff"])
        flag = "[bold green]yes (significant)[/]" if r["beats_both_significant"] else "yes" if r["beats_both"] else ""
        tab.add_row(f"{r['metric']} {'↑' if r['higher_is_better'] else '↓'}", f"{r['merge']:.4f}",
                    *[f"{v:.4f}" for v in r["parents"]], flag, diffs)
    out.print(tab)
    for line in res["findings"]:
        out.print(f" • {line}")
    n_sig = sum(r["beats_both_significant"] for r in res["rows"])
    out.print(f"the merge beats both parents on {sum(r['beats_both'] for r in res['rows'])} of {len(res['rows'])} "
              f"metrics ({n_sig} with every Holm-adjusted p < 0.05); metrics.json files and comparison.json "
              f"in {res['out']}")
