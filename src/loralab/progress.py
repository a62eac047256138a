"""One progress style for all long work: a Rich bar on a terminal, periodic lines in a log.

On a terminal a live bar shows on stderr. When stderr is not a terminal (a log file, CI,
`nohup`), the same calls print one plain line per task every `LORALAB_PROGRESS_EVERY`
seconds (default 30; 0 = never) and a last line when such a task ends:

    progress: train 120/500 (24%) loss 2.113 · 830 tokens/s  elapsed 0:01:02  eta 0:03:16
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import (
    BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn, TimeRemainingColumn,
)

console = Console(stderr=True)


def log_every() -> float:
    """Seconds between progress lines when stderr is not a terminal (0: no lines)."""
    try:
        return max(0.0, float(os.environ.get("LORALAB_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0


def _clock(s: float) -> str:
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class LoggedProgress(Progress):
    """A Rich Progress that, with no live display, prints a plain line per task now and then."""

    def __init__(self, *columns, log_interval: float = 0.0, **kw):
        super().__init__(*columns, **kw)
        self.log_interval = log_interval
        self._logged: dict[TaskID, float] = {}
        self._said: dict[TaskID, str] = {}  # the last line printed per task
        self._started = time.monotonic()

    def line(self, task_id: TaskID) -> str:
        t = self._tasks[task_id]
        done = f"{t.completed:g}" + (f"/{t.total:g}" if t.total else "")
        pct = f" ({100 * t.completed / t.total:.0f}%)" if t.total else ""
        info = t.fields.get("info") or ""
        elapsed = t.elapsed if t.elapsed is not None else time.monotonic() - self._started
        eta = f"  eta {_clock(t.time_remaining)}" if t.time_remaining is not None and not t.finished else ""
        return f"progress: {t.description} {done}{pct}{' ' + info if info else ''}  elapsed {_clock(elapsed)}{eta}"

    def _maybe_log(self, task_id: TaskID) -> None:
        if not self.log_interval:
            return
        now = time.monotonic()
        last = self._logged.get(task_id, self._started)
        if now - last >= self.log_interval:
            self._logged[task_id] = now
            self._say(task_id)

    def _say(self, task_id: TaskID) -> None:
        text = self.line(task_id)
        if text.split("  elapsed")[0] != self._said.get(task_id, "").split("  elapsed")[0]:
            console.print(text, markup=False, highlight=False, soft_wrap=True)
            self._said[task_id] = text

    def update(self, task_id: TaskID, **kw) -> None:
        super().update(task_id, **kw)
        self._maybe_log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_log(task_id)

    def stop(self) -> None:
        for task_id in list(self._logged):  # tasks long enough to have been reported: report their end
            if task_id in self._tasks:
                self._say(task_id)
        self._logged.clear()
        self._said.clear()
        super().stop()


def bar(transient: bool = False, disable: bool | None = None) -> Progress:
    """A progress bar on stderr; periodic lines instead when stderr is not a terminal; nothing when disabled."""
    live = not bool(disable) and console.is_terminal
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=transient,
        disable=not live,
        log_interval=0.0 if disable or live else log_every(),
    )


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
