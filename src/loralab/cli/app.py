"""The `loralab` command line: parse, call one stage function, print.

The shared Typer apps and console; verb groups (one module each beside this file)
register themselves on `app` or on the `data` sub-app when `loralab.cli` is imported.
"""

from __future__ import annotations

import typer
from rich.console import Console
from rich.table import Table

from .. import __version__

app = typer.Typer(no_args_is_help=True, add_completion=False, help=(
    "loralab: LoRA adapters that learn the domain without damaging the model, measured."
))
data_app = typer.Typer(no_args_is_help=True, help="Ingest, clean, structure, score and select training data.")
out = Console()
err = Console(stderr=True)


def fail(msg: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {msg}")
    raise typer.Exit(code)


@app.callback()
def _root(version: bool = typer.Option(False, "--version", help="Print the version and exit.")) -> None:
    if version:
        out.print(f"loralab {__version__}")
        raise typer.Exit()


@app.command("models")
def models_cmd() -> None:
    """List the known model specs and the cached model folders."""
    from .. import models

    t = Table(title="model specs")
    t.add_column("spec")
    t.add_column("what")
    for k, v in models.KNOWN.items():
        t.add_row(k + (" (default)" if k == models.DEFAULT_MODEL else ""), v)
    t.add_row("PATH", "any local Hugging Face model folder")
    t.add_row("ORG/NAME", "any hub id (where a hub is reachable)")
    out.print(t)
    cached = models.list_cached()
    c = Table(title=f"cached in {models.models_dir()}")
    for col in ("name", "fingerprint", "size", "path"):
        c.add_column(col)
    for m in cached:
        c.add_row(m["name"], m["fingerprint"], f"{m['bytes'] / 2**20:.0f} MiB", m["path"])
    out.print(c if cached else f"nothing cached yet in {models.models_dir()}")


@app.command("generate")
def generate_cmd(
    prompt: list[str] = typer.Argument(..., help="One or more user prompts (chat-templated)."),
    model: str = typer.Option("smollm2-135m", "--model", "-m", help="Model spec (see `loralab models`)."),
    adapter: list[str] = typer.Option([], "--adapter", "-a", help="Adapter folder(s) to apply."),
    max_new_tokens: int = typer.Option(64, help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
    system: str = typer.Option(None, help="System prompt (default: the chat template's own)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
) -> None:
    """Answer prompts with the model (and adapters, when given)."""
    from .. import generate as gen
    from .. import models

    try:
        loaded = models.load(model, device=device, dtype=dtype)
        if adapter:
            from ..adapters import apply_adapters

            loaded = apply_adapters(loaded, adapter)
    except (models.ModelError, ValueError, FileNotFoundError) as e:
        fail(str(e))
    answers = gen.generate(loaded, prompt, system=system, max_new_tokens=max_new_tokens,
                           temperature=temperature, seed=seed)
    for p, a in zip(prompt, answers):
        if len(prompt) > 1:
            out.print(f"[bold]> {p}[/]")
        out.print(a)


app.add_typer(data_app, name="data")
