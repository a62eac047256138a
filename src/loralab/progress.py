"""One Rich progress bar style for all long work."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

console = Console(stderr=True)


def bar(transient: bool = False, disable: bool | None = None) -> Progress:
    """A progress bar on stderr; hidden when asked to, or when stderr is not a terminal (logs, CI)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=bool(disable) or not console.is_terminal,
    )


def quiet() -> bool:
    return not sys.stderr.isatty()
