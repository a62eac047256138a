"""`loralab doctor`: this machine's measured matmul peaks and the device policy's choices."""

from __future__ import annotations

import typer
from rich.table import Table

from .app import app, fail, out


@app.command("doctor")
def doctor_cmd(
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16 (an override, shown as such)"),
    remeasure: bool = typer.Option(False, "--remeasure", help="Time the matmuls again instead of reading the cache."),
) -> None:
    """Measure (once, then cached) fp32 / bf16 / int8 matmul speed here and show the chosen formats."""
    from .. import device as devpolicy
    from .. import fidelity

    try:
        rep = devpolicy.doctor(device, dtype, remeasure=remeasure)
        rep["fidelity"] = fidelity.on_this_machine(rep["device"])
    except (ValueError, RuntimeError) as e:
        fail(str(e))
    out.print(f"{rep['device']}: {rep['name']}  (torch {rep['torch']}, {rep['threads']} threads)")
    t = Table(title="matmul throughput, the model's own shapes " + str(tuple(rep["shapes"])))
    t.add_column("format")
    t.add_column("GFLOP/s", justify="right")
    t.add_column("x fp32", justify="right")
    base = rep["gflops"].get("float32") or 0.0
    for f, g in sorted(rep["gflops"].items(), key=lambda kv: -kv[1]):
        t.add_row(f, f"{g:.1f}", f"{g / base:.2f}" if base else "-")
    out.print(t)
    c = Table(title=f"choices (low precision only when >= {rep['margin']}x fp32)")
    for col in ("path", "measured best", "used", "decided by"):
        c.add_column(col)
    for path, ch in rep["choices"].items():
        c.add_row(path, ch["measured"], ch["chosen"], ch["by"])
    out.print(c)
    if rep["fidelity"]:
        f = Table(title=f"fast scoring's rank check: Spearman rho of IFD vs fp32 (needs >= {rep['fidelity'][0].get('rho_min')})")
        for col in ("model", "adapter", "format", "rho", "records", "passes"):
            f.add_column(col)
        for v in rep["fidelity"]:
            f.add_row(str(v.get("model"))[:16], (v.get("adapter") or "-")[:16], str(v.get("format")),
                      "-" if v.get("rho") is None else f"{v['rho']:.4f}", str(v.get("n", "-")),
                      "yes" if v.get("passed") else "no")
        out.print(f)
    else:
        out.print("fast scoring's rank check (IFD vs fp32, per model): not run yet; the first "
                  "`loralab data score --precision fast` runs it")
    out.print(f"{'read from' if rep['cached'] else 'measured now, saved to'} {rep['cache']}")
