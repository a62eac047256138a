"""Corrections of the field, saved as a records folder that `loralab train --data` reads.

A correction says: after this prompt and this much of the continuation (`prefix`), the
text `chosen` should have come instead of `rejected` (what the model wrote from there on),
and the answer goes on with `rest` (completed by hand or regenerated from the corrected
prefix on the page), so a record teaches the whole answer, not one token.
Each save appends the correction to the folder's log and rebuilds the folder atomically:

    datasets/<name>/
      corrections.jsonl   every correction as given (the stage's input: one item per line)
      records.jsonl       one training record per usable correction:
                            chat prompt -> instruction {instruction: prompt, output: prefix + chosen + rest}
                            raw prompt  -> raw {text: prompt + prefix + chosen + rest}
      preferences.jsonl   {prompt, chosen, rejected} pairs (TRL's preference format) for
                          corrections that replaced text, whole answers on both sides
                          (prefix + chosen + rest against prefix + rejected), with the record's id
      quarantine.jsonl    corrections that cannot be used (e.g. `no_change`), with the reason
      data_card.json      counts that reconcile: read = kept + quarantined

Records of one prompt share a document (`source.doc`), so a prompt's corrections fall on
one side of the train/eval split.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ...data.card import build_card, read_card
from ...data.ledger import Ledger
from ...data.records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record
from ...errors import UserError
from ...io import atomic_dir, atomic_open, iter_jsonl, write_json

LOG_FILE = "corrections.jsonl"
PREFERENCES_FILE = "preferences.jsonl"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
STAGE = "inspect"
_LOCK = threading.Lock()


class Correction(BaseModel):
    """One correction made on the page."""

    model_config = ConfigDict(extra="forbid")
    prompt: str = Field(description="The prompt as typed (chat: the user turn; raw: the text before).")
    chat: bool = Field(True, description="The prompt went through the chat template.")
    prefix: str = Field("", description="The continuation before the corrected position.")
    chosen: str = Field(description="The text that should have come at the position.")
    rejected: str | None = Field(None, description="What the model wrote from the position on.")
    rest: str = Field("", description="The corrected answer after `chosen` (completed or regenerated).")
    replaced_id: int | None = Field(None, description="Token id that stood at the position.")
    position: int | None = Field(None, ge=0, description="Continuation token index of the correction.")
    adapters: dict[str, float] = Field(default_factory=dict, description="Strengths in use when it was made.")
    domain: str | None = None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise UserError(f"dataset name {name!r}: 1-64 letters, digits, '.', '_' or '-', not starting with '.'")
    return name


def dataset_dir(root: str | Path, name: str) -> Path:
    return Path(root) / check_name(name)


def parse(raw: dict) -> Correction:
    """A Correction from a request body; a one-line UserError when it is malformed."""
    try:
        c = Correction.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "correction"
        raise UserError(f"correction: {where}: {first['msg']}") from None
    if not c.prompt.strip():
        raise UserError("correction: the prompt is empty")
    if not c.chosen:
        raise UserError("correction: pick a token or type the text that should have come")
    return c


def _doc(c: Correction) -> str:
    return "inspect:" + hashlib.sha256(f"{c.chat}\0{c.prompt}".encode()).hexdigest()[:16]


def outcome(c: Correction, loc: dict) -> tuple[Record | None, dict | None, str | None]:
    """(training record, preference pair, quarantine reason) of one correction."""
    fixed = c.chosen + c.rest
    if c.rejected is not None and (c.rejected.startswith(fixed) if not c.rest else c.rejected.strip() == fixed.strip()):
        return None, None, "no_change"
    source = {**loc, "doc": _doc(c)}
    meta = {"origin": "inspector", "position": c.position, "adapters": c.adapters,
            "replaced_id": c.replaced_id, "rejected": c.rejected}
    fields = ({"kind": "instruction", "instruction": c.prompt, "output": c.prefix + fixed} if c.chat
              else {"kind": "raw", "text": c.prompt + c.prefix + fixed})
    rec = Record.model_validate({**fields, "domain": c.domain, "source": source, "meta": meta})
    pair = None
    if c.rejected:
        pair = {"id": rec.id, "prompt": c.prompt, "chosen": c.prefix + fixed, "rejected": c.prefix + c.rejected,
                "chat": c.chat, "source": source}
    return rec, pair, None


def _corrections(folder: Path) -> list[dict]:
    p = folder / LOG_FILE
    return list(iter_jsonl(p)) if p.exists() else []


def save(root: str | Path, name: str, correction: Correction) -> dict:
    """Append `correction` to dataset `name` under `root` and rebuild it; returns a summary."""
    folder = dataset_dir(root, name)
    with _LOCK:
        log = _corrections(folder) + [correction.model_dump(mode="json")]
        card = rebuild(folder, log)
    return _summary(folder, card)


def _summary(folder: Path, card: dict) -> dict:
    last = card["last"]
    return {"dataset": str(folder), "records": card["records"]["total"], "quarantined": card["quarantine"]["total"],
            "preferences": card["preferences"], "record_id": last.get("id"), "quarantine_reason": last.get("reason"),
            "corrections": card["corrections"]}


def undo(root: str | Path, name: str) -> dict:
    """Remove the last correction of dataset `name` and rebuild the folder from the rest."""
    folder = dataset_dir(root, name)
    with _LOCK:
        log = _corrections(folder)
        if not log:
            raise UserError(f"dataset {name!r} has no correction to undo")
        card = rebuild(folder, log[:-1])
    return {**_summary(folder, card), "undone": log[-1]}


def listing(root: str | Path, name: str) -> dict:
    """Every correction of dataset `name`, in order, with what became of it (record id or reason)."""
    folder = dataset_dir(root, name)
    out = []
    for line, raw in enumerate(_corrections(folder), 1):
        try:
            rec, _, reason = outcome(Correction.model_validate(raw), {"path": str(folder / LOG_FILE), "line": line})
        except ValidationError:
            rec, reason = None, "invalid_record"
        out.append({"line": line, "prompt": raw.get("prompt"), "answer": (raw.get("prefix") or "") +
                    (raw.get("chosen") or "") + (raw.get("rest") or ""), "rejected": raw.get("rejected"),
                    "record_id": rec.id if rec else None, "quarantine_reason": reason})
    return {"dataset": str(folder), "corrections": out}


def rebuild(folder: Path, log: list[dict]) -> dict:
    """Write the whole folder from its correction log (atomically: it appears whole or not at all)."""
    log_path = str(folder / LOG_FILE)
    last: dict = {}
    with atomic_dir(folder) as tmp:
        with atomic_open(tmp / LOG_FILE) as lf, atomic_open(tmp / RECORDS_FILE) as rf, \
                atomic_open(tmp / PREFERENCES_FILE) as pf, atomic_open(tmp / QUARANTINE_FILE) as qf:
            ledger = Ledger(STAGE, qf)
            n_pairs = 0
            for line, raw in enumerate(log, 1):
                lf.write(json.dumps(raw, ensure_ascii=False) + "\n")
                loc = {"path": log_path, "line": line}
                ledger.read(log_path)
                try:
                    rec, pair, reason = outcome(Correction.model_validate(raw), loc)
                except ValidationError as e:
                    rec, pair, reason = None, None, "invalid_record"
                    last = {"reason": reason}
                    ledger.quarantine(loc, reason, str(e).replace("\n", " "), raw)
                    continue
                if reason:
                    ledger.quarantine(loc, reason, "the chosen text is what the model wrote", raw)
                    last = {"reason": reason}
                    continue
                rf.write(json.dumps(rec.to_json(), ensure_ascii=False) + "\n")
                ledger.keep(log_path)
                last = {"id": rec.id}
                if pair:
                    pf.write(json.dumps(pair, ensure_ascii=False) + "\n")
                    n_pairs += 1
        # the log is the folder's whole history: one stage, rebuilt from it on every save
        card = build_card(tmp, ledger.summary(), config={"stage": STAGE})
        card["preferences"] = n_pairs
        write_json(tmp / CARD_FILE, card)
    card["last"] = last
    card["corrections"] = len(log)
    return card


def load(root: str | Path, name: str) -> Iterator[Correction]:
    """The usable corrections of dataset `name` (those that became records)."""
    folder = dataset_dir(root, name)
    if not folder.is_dir():
        raise UserError(f"no dataset {name!r} under {root}")
    for raw in _corrections(folder):
        try:
            c = Correction.model_validate(raw)
        except ValidationError:
            continue
        if outcome(c, {})[2] is None:
            yield c


def list_datasets(root: str | Path) -> list[dict]:
    """Dataset folders under `root` with their record counts."""
    out = []
    r = Path(root)
    if not r.is_dir():
        return out
    for d in sorted(r.iterdir()):
        if d.is_dir() and not d.name.startswith(".") and (d / LOG_FILE).exists():
            card = read_card(d) or {}
            out.append({"name": d.name, "path": str(d), "records": (card.get("records") or {}).get("total", 0),
                        "quarantined": (card.get("quarantine") or {}).get("total", 0),
                        "preferences": card.get("preferences", 0)})
    return out
