"""Quarantine and reconciliation: nothing a stage reads is lost silently.

Every data stage counts, per input file, the items it read and what became of each:
kept (turned into one or more records) or quarantined (written to quarantine.jsonl
with its location, a short reason code, a detail and a snippet). `read` is counted
where items are read and `kept`/`quarantined` where they are decided, so a bug that
drops an item without a verdict shows up as a reconciliation that does not balance.

Quarantine entry (one JSON object per line):
  {"location": {"path": ..., "line"|"offset"|"item": ...}, "reason": "malformed_json",
   "detail": "Expecting ',' delimiter: line 1 column 9", "snippet": "first 200 chars", "stage": "ingest"}

Repairs are not quarantined: the record is kept and `meta["repaired"]` lists the
reason codes (e.g. ["bom", "crlf", "invalid_utf8"]).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, TextIO

from rich.table import Table

SNIPPET_CHARS = 200


def snippet(x: Any) -> str:
    """The first ~200 characters of an item, whatever its type (bytes decoded leniently)."""
    if isinstance(x, bytes):
        x = x[: SNIPPET_CHARS * 4].decode("utf-8", errors="replace")
    elif not isinstance(x, str):
        x = json.dumps(x, ensure_ascii=False, default=str)
    return x[:SNIPPET_CHARS]


def add_repaired(meta: dict, *reasons: str) -> dict:
    """Append repair reason codes to meta["repaired"] (kept unique, in order)."""
    have = list(meta.get("repaired") or [])
    for r in reasons:
        if r and r not in have:
            have.append(r)
    if have:
        meta["repaired"] = have
    return meta


class Ledger:
    """Per-file counts and the quarantine stream of one stage run."""

    def __init__(self, stage: str, quarantine: TextIO | None = None):
        self.stage = stage
        self.q = quarantine
        self.files: dict[str, Counter] = {}
        self.reasons: Counter = Counter()
        self.repairs: Counter = Counter()

    def _f(self, path: str) -> Counter:
        return self.files.setdefault(str(path), Counter())

    def read(self, path: str, n: int = 1) -> None:
        self._f(path)["read"] += n

    def keep(self, path: str, records: int = 1, repaired: list[str] | tuple = ()) -> None:
        """One item kept; it became `records` output records (chunks count separately)."""
        f = self._f(path)
        f["kept"] += 1
        f["records"] += records
        if repaired:
            f["repaired"] += 1
            self.repairs.update(set(repaired))

    def quarantine(self, location: dict, reason: str, detail: str = "", snip: Any = "") -> None:
        self._f(location.get("path", "?"))["quarantined"] += 1
        self.reasons[reason] += 1
        if self.q is not None:
            row = {"location": location, "reason": reason, "detail": str(detail)[:1000],
                   "snippet": snippet(snip), "stage": self.stage}
            self.q.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    # ---------------------------------------------------------------- reporting

    def rows(self) -> list[dict]:
        out = []
        for path, c in self.files.items():
            out.append({"path": path, "read": c["read"], "kept": c["kept"], "quarantined": c["quarantined"],
                        "records": c["records"], "repaired": c["repaired"],
                        "balanced": c["read"] == c["kept"] + c["quarantined"]})
        return out

    def totals(self) -> dict:
        t = Counter()
        for c in self.files.values():
            t.update(c)
        return {"read": t["read"], "kept": t["kept"], "quarantined": t["quarantined"],
                "records": t["records"], "repaired": t["repaired"],
                "balanced": all(r["balanced"] for r in self.rows())}

    def summary(self) -> dict:
        return {"stage": self.stage, "files": self.rows(), "totals": self.totals(),
                "quarantine_reasons": dict(self.reasons.most_common()),
                "repairs": dict(self.repairs.most_common())}


def reconciliation_table(summary: dict) -> Table:
    """Rich table: read = kept + quarantined per input file, with a totals row."""
    t = Table(title=f"{summary['stage']}: read = kept + quarantined")
    for col in ("file", "read", "kept", "quarantined", "records out", "repaired", "ok"):
        t.add_column(col, justify="left" if col == "file" else "right")
    for r in summary["files"]:
        t.add_row(r["path"], str(r["read"]), str(r["kept"]), str(r["quarantined"]), str(r["records"]),
                  str(r["repaired"]), "✓" if r["balanced"] else "[red]✗[/]")
    s = summary["totals"]
    t.add_row("[bold]total", str(s["read"]), str(s["kept"]), str(s["quarantined"]), str(s["records"]),
              str(s["repaired"]), "✓" if s["balanced"] else "[red]✗[/]")
    return t


def reasons_table(summary: dict) -> Table:
    t = Table(title="quarantined by reason")
    t.add_column("reason")
    t.add_column("count", justify="right")
    for k, v in summary["quarantine_reasons"].items():
        t.add_row(k, str(v))
    return t
