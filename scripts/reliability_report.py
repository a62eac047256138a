"""Write RELIABILITY.md from the figures the reliability suite recorded.

    LORALAB_RELIABILITY_OUT=figures.jsonl pytest tests/reliability   # (make reliability does both)
    python scripts/reliability_report.py figures.jsonl RELIABILITY.md

Each test appends {"area": ..., counts...} to the figures file; this script only formats
them (no figure is typed by hand), with the machine and the date of the run.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

# area -> (what is tried, how)
AREAS = {
    "bad_inputs_ingest": ("every file of the generated bad-input corpus, alone",
                          "`loralab data ingest FILE`: invalid/mixed encodings, BOM, UTF-16, NUL bytes, random "
                          "binary and gzip named .txt/.jsonl, truncated JSON/JSONL/Parquet/Arrow, wrong types, "
                          "JSON nested 200,000 deep, YAML alias bomb and object tags, ragged CSV, empty file and "
                          "folder, symlink loop, unreadable file, a 100 MB single line"),
    "bad_inputs_mixed_folder": ("the whole corpus in one folder", "one `loralab data ingest`; read = kept + "
                                "quarantined per file, the good rows around the bad ones kept"),
    "bad_inputs_later_verbs": ("a records folder damaged after the fact (cut line, wrong types, NUL, foreign "
                               "fields)", "clean, corrupt, structure, select, render: each line quarantined "
                               "or the folder refused naming file and line"),
    "bad_yaml": ("bad YAML in every YAML loader", "alias bomb, object tag, 50,000-deep nesting, non-mapping, "
                 "gzip, invalid UTF-8, syntax error, wrong types, misspelt keys → train config and study spec: "
                 "exit 2, one line, bounded CPU time"),
    "hostile_adapters": ("adapter folders from strangers", "pickle-only weights, a header length past the end, "
                         "offsets outside the data, shapes that lie about their bytes, shapes or modules the "
                         "base lacks, a 300,000-token tokenizer, a card naming another base, a config that is "
                         "not JSON: refused before loading"),
    "kill9_ingest": ("kill -9 at seeded random moments during ingest", "the folder appears whole or not at "
                     "all; the re-run's records are byte-identical to an uninterrupted run's"),
    "kill9_train": ("kill -9 during training", "`train --resume` says which checkpoint it resumed from and "
                    "finishes the run (equality with an uninterrupted run: tests/test_train.py)"),
    "enospc_ingest": ("a full disk (2 MiB tmpfs)", "one clear line, exit 2, nothing partial left"),
    "server_abuse_limits": ("requests past every limit", "max_tokens 10⁹, n 10⁶, negative values, unknown "
                            "adapters, wrong types; load_lora_adapter with `..`, /etc/passwd, a pickle-only "
                            "folder, a symlink out of the registry, a traversal name: each a 4xx in OpenAI's shape"),
    "server_abuse": ("a storm above the queue limit", "24 clients against a queue of 6 while 8 slow-loris "
                     "connections hang half-sent and an adapter is loaded and unloaded in a loop: no 5xx, "
                     "every 429 with Retry-After, healthy requests answered, RSS back within 10 % (mid-stream "
                     "disconnects: tests/test_serve_api.py's storm)"),
}


def main(figures: str, out: str) -> None:
    rows: dict[str, list[dict]] = {}
    for line in Path(figures).read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            rows.setdefault(r.pop("area"), []).append(r)
    lines = ["# Reliability", "",
             "What loralab is made to survive, how it is tried, and what was measured. Written by",
             "`make reliability` (the whole suite at full size: `tests/reliability/`, then",
             "`scripts/reliability_report.py`); the default test run keeps a representative subset.",
             "", ("Sizes: full (`LORALAB_RELIABILITY_FULL=1`)." if all(r.get("full") for rs in rows.values() for r in rs)
                  else "Sizes: the default subset (some or all areas ran without `LORALAB_RELIABILITY_FULL=1`)."),
             "", f"Run on {time.strftime('%Y-%m-%d')}, {platform.machine()} "
             f"{_cpu()} ({_cores()} cores), Python {platform.python_version()}.", "",
             "| area | what is tried | how | figures |", "|---|---|---|---|"]
    for area, (what, how) in AREAS.items():
        got = rows.get(area)
        if not got:
            figs = "not run"
        else:
            last = got[-1]
            figs = ", ".join(f"{k.replace('_', ' ')} {v}" for k, v in last.items() if k not in ("t", "full"))
        lines.append(f"| {area.replace('_', ' ')} | {what} | {how} | {figs} |")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        lines += ["", "Run as root: the unreadable-file case was readable (root ignores file modes), and the "
                  "full-disk case ran on a real 2 MiB tmpfs."]
    lost = sum(r.get("lost", 0) for rs in rows.values() for r in rs)
    lines += ["", f"Records lost across every run above: **{lost}** (read = kept + quarantined everywhere).", ""]
    Path(out).write_text("\n".join(lines), encoding="utf-8")
    print(f"wrote {out}")


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cores() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 0


if __name__ == "__main__":
    main(*sys.argv[1:3])
