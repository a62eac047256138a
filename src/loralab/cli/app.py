"""The `loralab` command line: parse, call one stage function, print.

The shared Typer apps and console; verb groups (one module each beside this file)
register themselves on `app` or on the `data` sub-app when `loralab.cli` is imported.

`boundary()` is the one error boundary of every verb: the root command runs every call
inside it (`loralab`, `python -m loralab.cli`, `main()`, CliRunner). A user's mistake
(`UserError` and its subclasses ConfigError / ModelError / AdapterError / OutputBusy, a
usage error, a config that does not validate, a missing file, a full disk) prints one line
on stderr and exits 2; anything else is an internal bug: one line and exit 1, with the
traceback when `--debug` is given.
"""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Optional

import typer
from pydantic import BaseModel, ValidationError
from typer.core import TyperGroup
from typer._click import exceptions as click_errors  # Typer vendors its own click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .. import __version__
from ..errors import UserError


class _Group(TyperGroup):
    """The root command: every invocation (console script, `python -m`, CliRunner) runs inside `boundary`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        code = boundary(lambda: super(_Group, self).main(args, prog_name, complete_var, standalone_mode=False,
                                                         **extra), args, prog_name or "loralab")
        if standalone_mode:
            sys.exit(code)
        return code


app = typer.Typer(cls=_Group, no_args_is_help=True, add_completion=False, help=(
    "loralab: LoRA adapters that learn the domain without damaging the model, measured."
))
data_app = typer.Typer(no_args_is_help=True, help="Ingest, clean, structure, score and select training data.")
LOG_WIDTH = 400  # columns when not a terminal: tables at their natural width, never cut at 80


def _width(stream) -> int | None:
    """None (the terminal's own width) on a terminal; in a log or pipe: LORALAB_WIDTH or LOG_WIDTH."""
    if stream.isatty():
        return None
    try:
        return int(os.environ.get("LORALAB_WIDTH") or LOG_WIDTH)
    except ValueError:
        return LOG_WIDTH


out = Console(width=_width(sys.stdout))
err = Console(stderr=True, width=_width(sys.stderr))
DEBUG = {"on": False}
USER_OS_ERRORS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.ENOSPC,
                  errno.EDQUOT, errno.EROFS, errno.EEXIST, errno.ENAMETOOLONG}


def fail(msg: str, code: int = 2) -> None:
    """Print one error line and exit with `code` (2: the user's mistake)."""
    _line(msg)
    raise typer.Exit(code)


def _line(msg: str, label: str = "error") -> None:
    parts = [x.strip() for x in str(msg).splitlines() if x.strip()]
    text = parts[0] if parts else label
    if len(parts) > 1:  # several problems: one line, separated by "; "
        text += ("" if text.endswith(":") else ";") + " " + "; ".join(parts[1:])
    err.print(f"[bold red]{label}:[/] ", end="", soft_wrap=True)
    err.print(text, markup=False, highlight=False, soft_wrap=True)


def _os_message(e: OSError) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {e.filename or 'the output'}: free some space or choose another --out"
    if e.filename and e.strerror:
        return f"{e.strerror}: {e.filename}"
    return str(e) or type(e).__name__


def main(args: list[str] | None = None, prog_name: str = "loralab") -> None:
    """Run the CLI on `args` (default: sys.argv) and exit: 0 ok, 2 the user's mistake, 1 a bug."""
    typer.main.get_command(app).main(args, prog_name=prog_name)


def boundary(run, args, prog_name: str) -> int:
    """Run `run()` (the parsed command) and turn what it raises into one line and an exit status."""
    args = list(sys.argv[1:] if args is None else args)
    DEBUG["on"] = "--debug" in args
    try:
        rv = run()
        code = rv if isinstance(rv, int) else 0
    except click_errors.NoArgsIsHelpError as e:
        out.print(e.format_message(), markup=False, highlight=False)
        code = 2
    except click_errors.ClickException as e:  # usage: missing/unknown option, bad value for a typed flag
        where = e.ctx.command_path if getattr(e, "ctx", None) is not None else prog_name
        _line(f"{where}: {e.format_message()} (see `{where} --help`)")
        code = e.exit_code if e.exit_code else 2
    except (typer.Abort, KeyboardInterrupt):
        _line("interrupted")
        code = 130
    except UserError as e:
        _line(str(e))
        code = 2
    except ValidationError as e:  # a stage config built from flags: the user's values
        from ..config import problems_of

        _line(f"invalid {e.title} settings: " + "; ".join(problems_of(BaseModel, e)))
        code = 2
    except (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        _line(_os_message(e))
        code = 2
    except OSError as e:
        if e.errno == errno.EPIPE:
            code = 1
        elif e.errno in USER_OS_ERRORS:
            if DEBUG["on"]:
                traceback.print_exc()
            _line(_os_message(e))
            code = 2
        else:
            code = _bug(e)
    except Exception as e:  # noqa: BLE001 - the boundary: everything else is a bug
        code = _bug(e)
    return code


def _bug(e: BaseException) -> int:
    if DEBUG["on"]:
        traceback.print_exc()
        _line(f"{type(e).__name__}: {e}", label="internal error")
    else:
        _line(f"{type(e).__name__}: {e} (a bug in loralab; run again with --debug for the traceback)",
              label="internal error")
    return 1


def _version(value: bool) -> None:
    if value:
        out.print(f"loralab {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", is_eager=True, callback=_version,
                                 help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of an internal error."),
) -> None:
    DEBUG["on"] = DEBUG["on"] or debug


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
    adapter: Optional[str] = typer.Option(None, "--adapter", "-a", help="Adapter folder to answer with."),
    compare: list[str] = typer.Option([], "--compare", "-c", help=(
        "Adapter folder to compare (repeatable): base and each adapter answer, side by side.")),
    max_new_tokens: int = typer.Option(64, min=1, help="Tokens to generate per prompt."),
    temperature: float = typer.Option(0.0, min=0.0, help="0 = greedy."),
    seed: int = typer.Option(0, help="Sampling seed."),
    system: str = typer.Option(None, help="System prompt (default: the chat template's own)."),
    device: str = typer.Option("auto", help="auto | cpu | cuda[:N]"),
    dtype: str = typer.Option("auto", help="auto | float32 | bfloat16 | float16"),
) -> None:
    """Answer prompts with the model, with an adapter, or with base and several adapters side by side."""
    from .. import generate as gen
    from .. import models
    from ..adapters import apply_adapters, load_card, resolve_folder

    folders = [x for c in compare for x in c.split(",") if x] if compare else ([adapter] if adapter else [])
    if adapter and compare:
        raise UserError("--adapter and --compare do not mix: pass every adapter to compare with --compare")
    for f in folders:
        if not (resolve_folder(f) / "adapter_config.json").exists():
            what = "no such folder" if not Path(f).exists() else "not an adapter folder (no adapter_config.json)"
            raise UserError(f"{'--compare' if compare else '--adapter'} {f}: {what}")
    models.check_spec(model)
    loaded = models.load(model, device=device, dtype=dtype)
    if folders:
        loaded = apply_adapters(loaded, folders)
        by_folder = dict(zip(folders, _load_order_names(loaded, folders)))
        for note in gen.trigger_notes({by_folder[f]: load_card(f) for f in folders}, prompt):
            _line(note, label="note")
    kw = dict(system=system, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    if compare:
        names = _load_order_names(loaded, folders)
        answers = gen.compare(loaded, names, prompt, **kw)
        t = Table(title=f"{loaded.spec}: base and {len(names)} adapter{'s' if len(names) > 1 else ''}",
                  show_lines=True)
        for col in ["prompt", *answers]:
            t.add_column(col)
        for i, p in enumerate(prompt):
            t.add_row(*(escape(x) for x in [p, *(answers[k][i] for k in answers)]))
        out.print(t)
        return
    answers = gen.generate(loaded, prompt, **kw)
    for p, a in zip(prompt, answers):
        if len(prompt) > 1:
            out.print(f"[bold]> {escape(p)}[/]")
        out.print(a, markup=False, highlight=False)


def _load_order_names(loaded, folders: list[str]) -> list[str]:
    """The adapter names `apply_adapters` gave `folders`, in their order."""
    from ..adapters import _names, resolve_folder

    return _names([resolve_folder(f) for f in folders], None)


app.add_typer(data_app, name="data")
