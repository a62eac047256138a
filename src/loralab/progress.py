"""One Rich progress bar style for all long work."""

from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

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


@contextlib.contextmanager
def tracker(label: bool | str, default: str, total: int, info: str = "") -> Iterator[Callable[[int], None]]:
    """`with tracker(progress, "log-probs", n) as advance:` a transient bar, or a no-op when label is falsy."""
    if not label:
        yield lambda n: None
        return
    b = bar(transient=True)
    b.start()
    task = b.add_task(label if isinstance(label, str) else default, total=total, info=info)
    try:
        yield lambda n: b.update(task, advance=n)
    finally:
        b.stop()
