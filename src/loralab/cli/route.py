"""`loralab route`: which adapter a prompt goes to, and how well the router does.

    loralab route "Who kicked the field goal?" --registry registry/
    loralab route "<|use_lora_sport|> Who won?" --registry registry/ --json
    loralab route --eval --registry registry/ --out routing.json
    loralab route --eval --registry registry/ --prompts benchmarks/routing/prompts.jsonl   # prompts people write
    loralab route --eval --registry registry/ --prompts ... --embedder multilingual-e5-small
    loralab route --eval --registry registry/ --prompts ... --fit-on-tune --external other-writers.jsonl
"""

from __future__ import annotations

import dataclasses
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
    prompts: Optional[str] = typer.Option(None, "--prompts", help="--eval: also route a written-prompt benchmark "
                                          "(JSONL: id, text, domain, style, lang; domain general = no adapter)."),
    tune_share: float = typer.Option(0.5, help="--prompts: share of them (a seeded split) that chooses the "
                                     "threshold; every figure comes from the rest."),
    max_false_activation: float = typer.Option(0.05, help="--prompts: false activation the threshold allows on "
                                               "the tuning general prompts."),
    embedder: Optional[str] = typer.Option(None, help="Embedder of the classifier (all-MiniLM-L6-v2 | "
                                           "multilingual-e5-small; default: the registry's router.json, else "
                                           "e5 for written examples and MiniLM for records)."),
    fit_on_tune: bool = typer.Option(False, "--fit-on-tune", help="--prompts: fit the classifier on the tune "
                                     "split's prompts as the registry's written examples (instead of its records "
                                     "or examples.jsonl); temperature and threshold out of fold; figures on the rest."),
    examples_per_domain: Optional[int] = typer.Option(None, help="--fit-on-tune: at most this many tune prompts "
                                                      "per domain (and of general), a seeded draw."),
    external: Optional[str] = typer.Option(None, "--external", help="--eval: also route every prompt of this "
                                           "written-prompt file (same JSONL) with the router as fitted, e.g. "
                                           "prompts other people wrote (benchmarks/routing/external.py)."),
) -> None:
    """Route a prompt through trigger -> keywords -> classifier -> base, or evaluate the router."""
    from ..errors import UserError
    from ..serve.router import Router, read_registry, registry_settings

    if evaluate == (prompt is not None):
        raise UserError("give either a PROMPT or --eval")
    loaded = None
    if model is not None:
        from ..models import load

        loaded = load(model)
    settings = None
    if embedder is not None:
        settings = dataclasses.replace(registry_settings(registry), embedder=embedder)
    if external is not None and not evaluate:
        raise UserError("--external needs --eval")
    examples, written, others = None, None, None
    if evaluate:
        from ..evaluate.routing import read_prompts

        # both files read (and a bad line refused) before the router is fitted; each read once
        written = read_prompts(prompts) if prompts is not None else None
        others = read_prompts(external) if external is not None else None
    if fit_on_tune:
        if not (evaluate and prompts):
            raise UserError("--fit-on-tune needs --eval and --prompts")
        if examples_per_domain is not None and examples_per_domain < 1:
            raise UserError("--examples-per-domain must be at least 1")
        from ..evaluate.routing import tune_examples

        # the threshold is chosen out of fold at the false activation asked for here, never fixed
        settings = dataclasses.replace(settings or registry_settings(registry), threshold=None,
                                       max_false_activation=max_false_activation)
        have = {e.domain or e.name for e in read_registry(registry)[0]}
        rows = [r for r in written if r["domain"] == "general" or r["domain"] in have]
        examples = tune_examples(rows, tune_share, seed=settings.seed, per_domain=examples_per_domain)
    router = Router.from_registry(registry, model=loaded, settings=settings, examples=examples)
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
    from ..evaluate.routing import routing_report, shared_texts, written_report
    from ..io import write_json

    held = router.heldout_prompts(per_adapter=per_adapter, general=general)
    report = routing_report(router.route_many, held, [e.name for e in router.entries])
    domain_of = {e.name: e.domain or e.name for e in router.entries}
    if prompts is not None:
        report["written"] = written_report(router.route_many, written, domain_of,
                                           tune_share=tune_share, max_fa=max_false_activation,
                                           seed=router.settings.seed, choose=not fit_on_tune)
        report["written"]["file"] = prompts
        if examples is not None:
            report["written"]["fitted_on_examples"] = len(examples)
        elif router.examples:
            n = shared_texts(router.examples, written)
            if n:
                note = (f"{n} of the registry's written examples are among the measured prompts: the figures are "
                        "optimistic (use --fit-on-tune to fit on one split and measure the other)")
                out.print(f"[yellow]warning: {note}[/]")
                report["written"]["warning"] = note
    if others is not None:
        ext = written_report(router.route_many, others, domain_of, tune_share=0.0, max_fa=max_false_activation,
                             seed=router.settings.seed, choose=False)
        ext["file"] = external
        fitted = examples if examples is not None else router.examples
        n = shared_texts(fitted, others) if fitted else 0
        if n:
            ext["warning"] = f"{n} of the prompts the router was fitted on are among the external prompts"
            out.print(f"[yellow]warning: {ext['warning']}[/]")
        report["external"] = ext
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
    if "written" in report:
        _print_written(report["written"], router.settings.embedder)
    if "external" in report:
        _print_written(report["external"], router.settings.embedder)


def _pct(c: dict) -> str:
    return f"{100 * c['mean']:.0f} % [{100 * c['lo']:.0f}, {100 * c['hi']:.0f}]" if c.get("n") else "n/a"


def _print_written(w: dict, embedder: str) -> None:
    """The written-prompt figures: the threshold chosen on the tune split, then the report split."""
    if w["n_tune"] == 0:
        out.print(f"external prompts ({w['file']}, embedder {embedder}): the router as fitted, every one of its "
                  f"{w['n_report']} prompts of the registry's domains and general measured:")
    elif w["threshold"] is None:
        out.print(f"written prompts ({w['file']}, embedder {embedder}): classifier fitted on "
                  f"{w.get('fitted_on_examples', w['n_tune'])} of the {w['n_tune']} tuning prompts, its threshold "
                  f"chosen out of fold (false activation <= {100 * w['max_false_activation']:.0f} % there); figures "
                  f"on the other {w['n_report']}:")
    else:
        out.print(f"written prompts ({w['file']}, embedder {embedder}): threshold {w['threshold']:.2f} chosen on "
                  f"{w['n_tune']} tuning prompts (false activation <= {100 * w['max_false_activation']:.0f} % there); "
                  f"figures on the other {w['n_report']}:")
    t = Table()
    for col in ("", "threshold chosen on the tune split" if w["threshold"] is not None else "router",
                "the router's own threshold"):
        t.add_column(col)
    c, b = w["chosen"], w["as_built"]
    t.add_row("domain accuracy", _pct(c["accuracy"]), _pct(b["accuracy"]))
    t.add_row("false activation", _pct(c["false_activation"]), _pct(b["false_activation"]))
    for k in c["by"]:
        t.add_row(k, _pct(c["by"][k]), _pct(b["by"].get(k, {})))
    if "ru_minus_en" in c:
        d = c["ru_minus_en"]
        t.add_row("Russian − English (points)", f"{100 * d['mean']:+.0f} [{100 * d['lo']:+.0f}, {100 * d['hi']:+.0f}]",
                  "")
    t.add_row("expected calibration error", f"{c['ece']:.3f}", f"{b['ece']:.3f}")
    t.add_row("wrong domain at confidence >= 0.9", str(len(c["wrong_domain_confident"])),
              str(len(b["wrong_domain_confident"])))
    out.print(t)
