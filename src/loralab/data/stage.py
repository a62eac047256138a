"""The shape every records-to-records stage shares (clean, corrupt, structure).

`run_stage` streams the input folder's records.jsonl, hands (location, record) pairs
to the stage's `process` generator, and writes what comes back: a list of records
(kept; zero or more outputs) or a `Reject` (quarantined with its reason). The output
folder appears whole or not at all, and carries a data card whose `stages` list
extends the input card's, so a folder's history reads from ingest to here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from pydantic import ValidationError

from ..io import atomic_dir, atomic_open, write_json
from ..progress import bar
from .card import build_card, read_card, record_text
from .ledger import Ledger
from .records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record


@dataclass(frozen=True)
class Reject:
    reason: str
    detail: str = ""


Outcome = list[Record] | Reject
Process = Callable[[Iterable[tuple[dict, Record]]], Iterator[tuple[dict, Record, Outcome]]]


def _count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(1 for line in f if line.strip())


def run_stage(stage: str, in_dir: str | Path, out_dir: str | Path, process: Process, *,
              config: dict, progress: bool = True) -> dict:
    """Run `process` over the records of `in_dir` into `out_dir`; returns the new data card."""
    in_path = Path(in_dir) / RECORDS_FILE
    prior = read_card(in_dir) or {}
    split = prior.get("split", {})
    total = _count_lines(in_path)
    with atomic_dir(out_dir) as tmp:
        with atomic_open(tmp / RECORDS_FILE) as rf, atomic_open(tmp / QUARANTINE_FILE) as qf, \
                bar(disable=not progress) as pb:
            ledger = Ledger(stage, qf)
            task = pb.add_task(stage, total=total, info="")

            def inputs() -> Iterator[tuple[dict, Record]]:
                with open(in_path, encoding="utf-8", errors="replace") as f:
                    for lineno, line in enumerate(f, 1):
                        if not line.strip():
                            continue
                        loc = {"path": str(in_path), "line": lineno}
                        ledger.read(loc["path"])
                        pb.advance(task)
                        try:
                            rec = Record.model_validate_json(line)
                        except ValidationError as e:
                            ledger.quarantine(loc, "invalid_record", str(e).replace("\n", " "), line)
                            continue
                        yield loc | {"id": rec.id}, rec

            for loc, rec, outcome in process(inputs()):
                if isinstance(outcome, Reject):
                    ledger.quarantine(loc, outcome.reason, outcome.detail, record_text(rec))
                    continue
                for r in outcome:
                    rf.write(json.dumps(r.to_json(), ensure_ascii=False) + "\n")
                before = set(rec.meta.get("repaired") or ())
                new = [x for x in (outcome[0].meta.get("repaired") or ()) if x not in before] if outcome else []
                ledger.keep(loc["path"], len(outcome), new)
        card = build_card(tmp, ledger.summary(), prior=prior, config=config,
                          eval_frac=split.get("eval_frac", 0.1), seed=split.get("seed", 0))
        write_json(tmp / CARD_FILE, card)
    return card


def with_content(rec: Record, fields: dict, **meta) -> Record:
    """A copy of `rec` with new content fields (and a fresh content id) plus meta additions."""
    data = rec.to_json()
    data.pop("id", None)
    data.update(fields)
    data["meta"] = {**rec.meta, **meta}
    return Record.model_validate(data)


def text_fields(rec: Record) -> dict:
    """The record's editable text: {field: str} with chat turns as "messages.<i>"."""
    c = rec.content()
    if rec.kind == "chat":
        return {f"messages.{i}": m["content"] for i, m in enumerate(c["messages"])}
    return {k: v for k, v in c.items() if isinstance(v, str)}


def set_text_fields(rec: Record, new: dict) -> dict:
    """Content fields of `rec` with the edited texts from `new` put back."""
    c = rec.content()
    if rec.kind == "chat":
        msgs = [dict(m) for m in c["messages"]]
        for k, v in new.items():
            msgs[int(k.split(".")[1])]["content"] = v
        return {"messages": msgs}
    return {**c, **new}
