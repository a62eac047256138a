"""The canonical record: one JSON object per line in `records.jsonl`.

Fields common to every kind:
  id        stable content hash (sha256 of kind + content fields, 16 hex chars)
  kind      raw | qa | instruction | chat
  domain    free label ("sport", "medical", ...) or null
  source    where it came from: {"path": ..., "line": ..., "offset": ..., "doc": ...}
            `doc` names the source document; splits are made by doc, never by line.
  meta      free metadata (scores, repair flags, split, ...)
Kind fields:
  raw          text
  qa           question, answer, context (optional passage shown with the question)
  instruction  instruction, input (optional), output
  chat         messages: [{"role": "system"|"user"|"assistant", "content": str}, ...]
                 ending with an assistant turn (the response)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ..errors import UserError
from ..io import write_jsonl

Kind = Literal["raw", "qa", "instruction", "chat"]
CONTENT_FIELDS: dict[str, tuple[str, ...]] = {
    "raw": ("text",),
    "qa": ("question", "answer", "context"),
    "instruction": ("instruction", "input", "output"),
    "chat": ("messages",),
}
RECORDS_FILE = "records.jsonl"
QUARANTINE_FILE = "quarantine.jsonl"
CARD_FILE = "data_card.json"


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["system", "user", "assistant"]
    content: str


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id: str = ""
    kind: Kind
    domain: str | None = None
    source: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    text: str | None = None
    question: str | None = None
    answer: str | None = None
    context: str | None = None
    instruction: str | None = None
    input: str | None = None
    output: str | None = None
    messages: list[Message] | None = None

    @model_validator(mode="after")
    def _check(self) -> "Record":
        need = {"raw": ("text",), "qa": ("question", "answer"), "instruction": ("instruction", "output"),
                "chat": ("messages",)}[self.kind]
        for f in need:
            v = getattr(self, f)
            if v is None or (isinstance(v, str) and not v.strip()) or (isinstance(v, list) and not v):
                raise ValueError(f"{self.kind} record needs a non-empty {f!r}")
        if self.kind == "chat":
            if self.messages[-1].role != "assistant" and len(self.messages) > 1:
                raise ValueError("chat record must end with an assistant message")
        for k, fields in CONTENT_FIELDS.items():
            if k != self.kind:
                for f in fields:
                    if f not in CONTENT_FIELDS[self.kind] and getattr(self, f) is not None:
                        raise ValueError(f"{self.kind} record has a stray {f!r} field")
        if not self.id:
            self.id = content_id(self)
        return self

    def content(self) -> dict[str, Any]:
        out = {}
        for f in CONTENT_FIELDS[self.kind]:
            v = getattr(self, f)
            if v is not None:
                out[f] = [m.model_dump() for m in v] if f == "messages" else v
        return out

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, mode="json")


def content_id(rec: Record) -> str:
    """sha256 over kind + content fields (not source/meta): same content, same id."""
    blob = json.dumps({"kind": rec.kind, **rec.content()}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def to_messages(rec: Record) -> list[dict[str, str]]:
    """The record as a conversation whose last message is the response (assistant).

    raw records become a single assistant message (no prompt: whole-text loss).
    """
    if rec.kind == "raw":
        return [{"role": "assistant", "content": rec.text}]
    if rec.kind == "qa":
        q = f"{rec.context.strip()}\n\n{rec.question}" if rec.context else rec.question
        return [{"role": "user", "content": q}, {"role": "assistant", "content": rec.answer}]
    if rec.kind == "instruction":
        u = f"{rec.instruction}\n\n{rec.input}" if rec.input else rec.instruction
        return [{"role": "user", "content": u}, {"role": "assistant", "content": rec.output}]
    return [m.model_dump() for m in rec.messages]


class RecordsError(UserError):
    """A records file with a line that is not a record (named by file and line)."""


def read_records(path: str | Path, *, skip_invalid: bool = False) -> Iterator[Record]:
    """Stream records from a records folder or a records.jsonl file (constant memory).

    A line that is not a valid record raises RecordsError naming the file and line, or is
    skipped with `skip_invalid` (for passes whose stage quarantines the same lines itself).
    """
    from pydantic import ValidationError

    p = Path(path)
    if p.is_dir():
        p = p / RECORDS_FILE
    if not p.is_file():
        raise RecordsError(f"no records at {p}")
    with open(p, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                yield Record.model_validate_json(line)
            except ValidationError as e:
                if skip_invalid:
                    continue
                what = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'record'}: {x['msg']}" for x in e.errors()[:3])
                raise RecordsError(f"{p} line {line_no} is not a valid record ({what})") from None


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    p = Path(path)
    if p.is_dir() or not p.suffix:
        p = p / RECORDS_FILE
    return write_jsonl(p, (r.to_json() for r in records))


def response_text(rec: Record) -> str | None:
    """The text a record teaches (None when the record has no response turn)."""
    if rec.kind == "raw":
        return rec.text
    msgs = to_messages(rec)
    if msgs[-1]["role"] != "assistant" or len(msgs) < 2:
        return None
    return msgs[-1]["content"]


def read_rows(records_dir: str | Path, stage: str = "score") -> tuple[list[tuple[int, Record]], list[dict]]:
    """(line, Record) for valid rows of a records folder (or .jsonl file); quarantine rows for the others."""
    from pydantic import ValidationError

    p = Path(records_dir)
    p = p / RECORDS_FILE if p.is_dir() else p
    good, bad = [], []
    with open(p, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                good.append((line_no, Record.model_validate(json.loads(line))))
            except (json.JSONDecodeError, ValidationError) as e:
                msg = str(e).splitlines()[0] if isinstance(e, json.JSONDecodeError) else \
                    "; ".join(x["msg"] for x in e.errors())
                bad.append({"reason": f"invalid record: {msg}", "stage": stage,
                            "location": {"path": str(p), "line": line_no}, "row": line.rstrip("\n")[:2000]})
    return good, bad
