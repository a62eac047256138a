"""`loralab study` and `loralab data distill`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app, data_app, err, fail, out


@app.command("study")
def study_cmd(
    spec: Path = typer.Argument(..., help="Study spec (YAML), e.g. studies/quickstart.yaml."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Studies are written to OUT/<study name>/."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the expansion into runs and stop."),
    only: list[str] = typer.Option([], "--only", help="Run only these run ids."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from the run folders."),
) -> None:
    """Run a study matrix (resumable) and write report.html + results.csv."""
    from ..study import report, runner
    from ..study.spec import StudyError, expand, load_spec

    try:
        s = load_spec(spec)
        runs = expand(s)
    except StudyError as e:
        fail(str(e))
    root = runner.study_dir(s, out_dir)
    t = Table(title=f"study {s.name}: {len(runs)} runs → {root}")
    t.add_column("run id")
    cols = list(s.axes) + (["seed"] if len(s.seeds) > 1 else [])
    for k in cols:
        t.add_column(k)
    t.add_column("status")
    for r in runs:
        t.add_row(r.id, *[str(r.labels.get(k)) for k in cols], runner.status_of(root / "runs" / r.id)["state"])
    out.print(t)
    if dry_run:
        return
    if not report_only:
        def event(kind, run, st):
            msg = {"skip": "[dim]done, skipped[/]", "start": "[bold]running[/]", "done": "[green]done[/]",
                   "failed": f"[red]failed[/] {st.get('error', '')[:300]}"}.get(kind, kind)
            err.print(f"{run.id} {run.name}: {msg}")

        runner.run_study(s, out_dir, only=only or None, on_event=event)
    page = report.build(root, s.model_dump(mode="json"))
    out.print(f"report: {page.resolve()}")


@data_app.command("distill")
def distill_cmd(
    in_dir: Path = typer.Argument(..., help="Records folder (qa / instruction / chat records are rewritten)."),
    out_dir: Path = typer.Option(..., "--out", help="Output records folder."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model that rewrites."),
    max_new_tokens: int = typer.Option(96, help="Longest rewrite in tokens."),
    limit: int = typer.Option(None, help="Distill at most this many records."),
) -> None:
    """Rewrite responses with the model itself (self-distillation), keeping checked rewrites."""
    from ..data.distill import DistillConfig, distill

    if not (in_dir / "records.jsonl").exists():
        fail(f"{in_dir} holds no records.jsonl")
    card = distill(in_dir, out_dir, DistillConfig(model=model, max_new_tokens=max_new_tokens, limit=limit))
    tot = card.get("reconciliation", {}).get("totals", {})
    out.print(f"distill: read {tot.get('read')} = kept {tot.get('kept')} + quarantined {tot.get('quarantined')}"
              f" → {out_dir}")
    if not tot.get("kept"):
        raise typer.Exit(1)
