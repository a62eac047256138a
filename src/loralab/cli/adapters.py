"""`loralab adapters [DIR]`: the adapter folders under DIR, with what their cards say.

    loralab adapters runs/
    loralab adapters runs/ --json
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UserError
from .app import app, out


def _pair(x: tuple) -> str:
    a, b = x
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    return "-" if a is None and b is None else f"{f(a)} -> {f(b)}"


@app.command("adapters")
def adapters_cmd(
    root: Path = typer.Argument(Path("."), help="Folder to search (recursively) for adapter folders."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per adapter instead of a table."),
) -> None:
    """List trained adapters: base, domain, trigger (mode), role, data, steps and losses."""
    from ..adapters import describe, find_adapters

    if not root.exists():
        raise UserError(f"{root}: no such folder")
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    rows = [describe(f) for f in find_adapters(root)]
    if as_json:
        for r in rows:
            out.print(json.dumps(r, ensure_ascii=False), markup=False, highlight=False, soft_wrap=True)
        return
    if not rows:
        out.print(f"no adapter folders under {root}")
        return
    t = Table(title=f"{len(rows)} adapter folder{'s' if len(rows) != 1 else ''} under {root}")
    for col in ("adapter", "base", "domain", "method", "r", "trigger (mode)", "role", "data", "examples", "steps",
                "train loss", "eval loss"):
        t.add_column(col, justify="right" if col in ("r", "examples", "steps") else "left")
    for r in rows:
        trig = f"{r['trigger']} ({r['trigger_mode']})" if r["trigger"] else (r["trigger_mode"] or "-")
        role = r["role"] or "-"
        if r["keywords"]:
            role += " [" + ", ".join(r["keywords"]) + "]"
        cells = (r["path"], r["base"] or "?", r["domain"] or "-", r["method"] or "?", str(r["rank"] or "-"),
                 trig, role, r["data"] or "-", str(r["train_examples"] or "-"), str(r["steps"] or "-"),
                 _pair(r["train_loss"]), _pair(r["eval_loss"]))
        t.add_row(*(escape(c) for c in cells))
    out.print(t)
