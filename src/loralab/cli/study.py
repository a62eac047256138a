"""`loralab study` and `loralab data distill`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from .app import app, data_app, err, fail, out


def print_results(root: Path) -> None:
    """The results table and the findings, as the report has them (from the run folders)."""
    from ..io import read_json
    from ..study import report

    head, rows = report.terminal_rows(report.load_runs(root))
    t = Table(title="results (nats/token; accuracy in percentage points; 95% bootstrap intervals)")
    for h in head:
        t.add_column(h, overflow="fold")
    for row in rows:
        t.add_row(*row, style=None if row[1] == "done" else "red")
    out.print(t)
    f = read_json(root / "findings.json") if (root / "findings.json").exists() else {}
    if f.get("weights"):
        out.print(f["weights"])
    out.print("[bold]Findings[/]")
    for line in f.get("findings") or ["No finished runs yet."]:
        out.print(f" • {line}")
    if f.get("note"):
        out.print(f"[dim]{f['note']}[/]")


@app.command("study")
def study_cmd(
    spec: Path = typer.Argument(..., help="Study spec (YAML), e.g. studies/quickstart.yaml."),
    out_dir: Path = typer.Option(Path("runs"), "--out", help="Studies are written to OUT/<study name>/."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate the whole spec, print the runs and stop."),
    only: list[str] = typer.Option([], "--only", help="Run only these run ids."),
    report_only: bool = typer.Option(False, "--report-only", help="Rebuild the report from the run folders."),
    findings: Path = typer.Option(None, "--findings", help="Also write this Markdown file (e.g. FINDINGS.md) "
                                  "from the spec's `findings` questions, and copy results.csv, report.html and "
                                  "findings.json into a findings/ folder beside it."),
) -> None:
    """Run a study matrix (resumable), write report.html + results.csv, print results and findings.

    Exits 1 when any run failed (the others still run and are reported)."""
    from ..study import report, runner
    from ..study.data import steps
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
    t.add_column("data steps (in order)")
    t.add_column("status")
    for r in runs:
        t.add_row(r.id, *[str(r.labels.get(k)) for k in cols], " → ".join(steps(r.config.data)),
                  runner.status_of(root / "runs" / r.id)["state"])
    out.print(t)
    if s.merge:  # merges of the runs' adapters (study/merging.py), after the runs
        from ..study.merging import plan

        for m in plan(s, runs):
            out.print(f"merge {m.id} {m.name} {m.fields} of runs {', '.join(m.parents)}"
                      + (f" ({', '.join(f'{k}={v}' for k, v in m.group.items())})" if m.group else ""))
    if dry_run:
        out.print(f"spec valid: {len(runs)} runs")
        if s.findings:  # the family FINDINGS.md is corrected over, declared here before any run
            from ..study.findings import FindingsSpec, family

            fs = FindingsSpec.model_validate(s.findings)
            fam = family(s.model_dump(mode="json"), fs)
            n_eq = sum(bool(f["margin"]) for f in fam)
            out.print(f"findings: {len(fam)} declared comparisons and {n_eq} equivalence tests (margins "
                      f"{', '.join(f'{k} ±{v:g}' for k, v in fs.margins.items()) or 'none'}): Holm over "
                      f"{len(fam) + n_eq} tests at family-wise {fs.alpha:g}, judged over {len(s.seeds)} seeds")
        from ..study.estimate import estimate

        pending = {r.id for r in runs if runner.status_of(root / "runs" / r.id)["state"] != "done"}
        est = estimate(runs, root, pending)
        how = {"observed": "from this study's finished runs here",
               "measured": "from the model's speed measured here now (model arithmetic only: a lower bound)",
               "mixed": "finished runs here where a method has some, measured speed for the rest"}[est["source"]]
        per = ", ".join(f"{k} {v / 60:.0f} min" for k, v in (est.get("per_method") or {}).items())
        out.print(f"estimated run time of the {est['runs']} pending runs on this machine: "
                  f"{est['seconds'] / 60:.0f} min ({per}; {how})")
        return
    states = {}
    if not report_only:
        def event(kind, run, st):
            msg = {"skip": "[dim]done, skipped[/]", "start": "[bold]running[/]", "done": "[green]done[/]",
                   "failed": f"[red]failed[/] {st.get('error', '')[:300]}"}.get(kind, kind)
            err.print(f"{run.id} {run.name}: {msg}")

        states = runner.run_study(s, out_dir, only=only or None, on_event=event)
    page = report.build(root, s.model_dump(mode="json"))
    print_results(root)
    out.print(f"report: {page.resolve()}")
    if findings is not None:
        if not s.findings:
            fail(f"{spec} has no `findings` block: nothing to write to {findings}")
        from ..study.findings import write as write_findings

        md = write_findings(root, s.model_dump(mode="json"), findings)
        out.print(f"findings: {md.resolve()} (files: {(md.parent / 'findings').resolve()})")
    if not report_only:
        line = runner.summary_line(states, runs)
        if any(v.get("state") == "failed" for v in states.values()):
            err.print(f"[red]{line}[/]")
            raise typer.Exit(1)
        out.print(line)


@data_app.command("distill")
def distill_cmd(
    in_dir: Path = typer.Argument(..., help="Records folder (qa / instruction / chat records are rewritten)."),
    out_dir: Path = typer.Option(..., "--out", help="Output records folder."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model that rewrites."),
    max_new_tokens: int = typer.Option(96, help="Longest rewrite in tokens."),
    limit: int = typer.Option(None, help="Distill at most this many records."),
    backend: str = typer.Option("auto", help="Generation backend: auto | static (the static-cache decoder) | hf "
                                "(transformers generate)."),
) -> None:
    """Rewrite responses with the model itself (self-distillation), keeping checked rewrites."""
    from ..data.distill import DistillConfig, distill

    if not (in_dir / "records.jsonl").exists():
        fail(f"{in_dir} holds no records.jsonl")
    card = distill(in_dir, out_dir, DistillConfig(model=model, max_new_tokens=max_new_tokens, limit=limit,
                                                  backend=backend))
    tot = card.get("reconciliation", {}).get("totals", {})
    out.print(f"distill: read {tot.get('read')} = kept {tot.get('kept')} + quarantined {tot.get('quarantined')}"
              f" → {out_dir}")
    if not tot.get("kept"):
        raise typer.Exit(1)
