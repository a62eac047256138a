"""`loralab route`: which adapter a prompt goes to, and how well the router does.

    loralab route "Who kicked the field goal?" --registry registry/
    loralab route "<|use_lora_sport|> Who won?" --registry registry/ --json
    loralab route --eval --registry registry/ --out routing.json
"""

from __future__ import annotations

import json
from typing import Optional

import typer
from rich.table import Table

from .app import app, out


@app.command("route")
def route_cmd(
    prompt: Optional[str] = typer.Argument(None, help="The prompt to route (not with --eval)."),
    registry: str = typer.Option(..., "--registry", "-r", help="Folder of adapter folders (loralab train output)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model spec: adapters trained on "
                                        "another base are left out."),
    evaluate: bool = typer.Option(False, "--eval", help="Route held-out prompts of every adapter and general "
                                  "prompts (ARC, PIQA); print and write accuracy, confusion, false activation."),
    out_file: str = typer.Option("routing.json", "--out", "-o", help="JSON report of --eval."),
    per_adapter: int = typer.Option(100, help="--eval: held-out prompts per adapter."),
    general: int = typer.Option(200, help="--eval: held-out general prompts."),
    as_json: bool = typer.Option(False, "--json", help="Print the decision as JSON."),
) -> None:
    """Route a prompt through trigger -> keywords -> classifier -> base, or evaluate the router."""
    from ..errors import UserError
    from ..serve.router import Router

    if evaluate == (prompt is not None):
        raise UserError("give either a PROMPT or --eval")
    loaded = None
    if model is not None:
        from ..models import load

        loaded = load(model)
    router = Router.from_registry(registry, model=loaded)
    for n in router.notes:
        out.print(f"[dim]note: {n}[/]")
    if not evaluate:
        d = router.route(prompt)
        if as_json:
            out.print_json(json.dumps({**d.to_json(), "text": d.text}))
            return
        names = ", ".join(f"{n} (weight {w:g})" for n, w in d.adapters) or "base"
        out.print(f"[bold]{names}[/]  rule={d.rule}  confidence={d.confidence:.3f}")
        out.print(f"reason: {d.reason}")
        if d.text != prompt:
            out.print(f"text: {d.text}")
        return
    from ..evaluate.routing import routing_report
    from ..io import write_json

    prompts = router.heldout_prompts(per_adapter=per_adapter, general=general)
    report = routing_report(router.route_many, prompts, [e.name for e in router.entries])
    report["registry"] = registry
    report["classifiers"] = {r: {"classes": c.classes, "threshold": c.threshold, "temperature": c.temperature,
                                 "calibration": c.calibration} for r, c in router.classifiers.items()}
    report["settings"] = router.settings.__dict__
    write_json(out_file, report)
    a, f = report["accuracy"], report["false_activation"]
    out.print(f"routing accuracy on {report['n_domain']} held-out domain prompts: "
              f"{100 * a['mean']:.1f} % [{100 * a['lo']:.1f}, {100 * a['hi']:.1f}]")
    out.print(f"false activation on {report['n_general']} general prompts: "
              f"{100 * f['mean']:.1f} % [{100 * f['lo']:.1f}, {100 * f['hi']:.1f}]")
    labels = report["confusion"]["labels"]
    t = Table(title="confusion (rows: expected, columns: routed)")
    t.add_column("")
    for lab in labels:
        t.add_column(lab, justify="right")
    for lab in labels:
        row = report["confusion"]["counts"].get(lab, {})
        t.add_row(lab, *[str(row.get(c, 0)) for c in labels])
    out.print(t)
    out.print(f"rules used: {report['rules']}   → {out_file}")
