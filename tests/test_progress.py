"""Output that reads well in a log: periodic progress lines and full-width tables off a terminal."""

from __future__ import annotations

import io
import time

from loralab import progress


def test_progress_lines_when_not_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("LORALAB_PROGRESS_EVERY", "0.01")
    with progress.bar() as pb:
        task = pb.add_task("scoring", total=4, info="")
        for i in range(4):
            time.sleep(0.02)
            pb.update(task, advance=1, info=f"{i + 1} done")
    lines = capsys.readouterr().err.splitlines()
    assert [x.split("  elapsed")[0] for x in lines] == [
        "progress: scoring 1/4 (25%) 1 done", "progress: scoring 2/4 (50%) 2 done",
        "progress: scoring 3/4 (75%) 3 done", "progress: scoring 4/4 (100%) 4 done"]  # the end said once


def test_no_lines_when_disabled_or_quick(monkeypatch, capsys):
    monkeypatch.setenv("LORALAB_PROGRESS_EVERY", "30")
    with progress.bar() as pb:  # shorter than the interval: nothing to report
        pb.update(pb.add_task("fast", total=2, info=""), advance=2)
    monkeypatch.setenv("LORALAB_PROGRESS_EVERY", "0.001")
    with progress.bar(disable=True) as pb:
        t = pb.add_task("off", total=2, info="")
        time.sleep(0.01)
        pb.update(t, advance=2)
    assert capsys.readouterr().err == ""


def test_the_end_of_a_reported_task_is_said(monkeypatch, capsys):
    monkeypatch.setenv("LORALAB_PROGRESS_EVERY", "0.05")
    with progress.bar() as pb:
        t = pb.add_task("train", total=10, info="")
        time.sleep(0.06)
        pb.update(t, advance=1)  # reported (interval passed)
        pb.update(t, advance=9)  # too soon for a line of its own ...
    lines = [x.split("  elapsed")[0] for x in capsys.readouterr().err.splitlines()]
    assert lines == ["progress: train 1/10 (10%)", "progress: train 10/10 (100%)"]  # ... said when it ends


def test_tables_are_not_cut_at_80_columns_in_a_log(monkeypatch):
    from rich.console import Console
    from rich.table import Table

    from loralab.cli.app import LOG_WIDTH, _width

    monkeypatch.delenv("LORALAB_WIDTH", raising=False)
    assert _width(io.StringIO()) == LOG_WIDTH
    monkeypatch.setenv("LORALAB_WIDTH", "120")
    assert _width(io.StringIO()) == 120
    buf = io.StringIO()
    t = Table()
    for c in ("file", "interval"):
        t.add_column(c)
    long = "runs/quickstart/runs/qa_ifd-0123456789abcdef/adapter/metrics.json"
    t.add_row(long, "0.335 [0.321, 0.349]")
    Console(file=buf, width=_width(buf)).print(t)
    assert long in buf.getvalue() and "0.335 [0.321, 0.349]" in buf.getvalue()
