"""`loralab data ingest PATH... --out DIR`: any mix of sources -> one records folder.

    loralab data ingest notes/ extra.jsonl olmo:drop-nfl --out data/raw --domain sport

Output folder (appears whole or not at all):
  records.jsonl     canonical records (loralab.data.records), streamed
  quarantine.jsonl  every item that could not be used, with location and reason
  data_card.json    counts, token lengths, split by document, reconciliation

Per item: read (sources.py) -> recognise the schema (schema.py) -> normalise text
(CRLF, NUL characters) -> bound the size -> build a Record -> chunk long raw documents
under the token budget (chunk.py). A chunk keeps its document's `source.doc` and gets
`source.chunk`, so a split by document keeps a document's chunks together.
"""

from __future__ import annotations

import json
from itertools import islice
from pathlib import Path

from pydantic import Field, ValidationError

from ..config import StageConfig
from ..errors import UserError
from ..io import atomic_dir, atomic_open, write_json
from ..progress import bar
from .card import build_card
from .chunk import Chunker
from .ledger import Ledger, add_repaired
from .records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record
from .schema import SchemaError, content_chars, recognise, row_doc, row_domain
from .sources import Bad, Item, missing_sources, read_source


class IngestConfig(StageConfig):
    """Settings of `ingest`; every field has a flag or a YAML key of the same name."""

    domain: str | None = Field(None, description="Domain label for every record (overrides the source's own).")
    chunk_tokens: int = Field(512, ge=16, description="Token budget of one raw chunk (SmolLM2 tokenizer).")
    max_record_chars: int = Field(50_000, ge=1, description="Q&A / instruction / chat records longer than this "
                                  "(all text fields together) are quarantined as oversized: they cannot be chunked.")
    max_doc_chars: int = Field(5_000_000, ge=1, description="Raw documents longer than this are quarantined as "
                               "oversized instead of being chunked.")
    max_file_bytes: int = Field(512 * 2**20, ge=1, description="Files read whole (.txt/.md/.json/.yaml) larger than "
                                "this are quarantined; stream big data as .jsonl/.csv/.parquet instead.")
    limit: int | None = Field(None, ge=1, description="Read at most this many items from each source.")
    eval_frac: float = Field(0.1, ge=0, le=1, description="Eval share of documents in the card's recorded split.")
    seed: int = Field(0, description="Seed of the recorded split and of the card's token-length sample.")
    token_sample: int = Field(2000, ge=0, description="Records sampled for the card's token-length histogram.")
    progress: bool = Field(True, description="Show a progress bar.")


def _normalise(fields: dict) -> list[str]:
    """CRLF inside field values -> LF, NUL characters removed; returns repair flags."""
    flags = []

    def fix(s: str) -> str:
        if "\r" in s:
            s = s.replace("\r\n", "\n").replace("\r", "\n")
            flags.append("crlf")
        if "\x00" in s:
            s = s.replace("\x00", "")
            flags.append("nul_removed")
        return s

    for k, v in fields.items():
        if isinstance(v, str) and k != "kind":
            fields[k] = fix(v)
        elif k == "messages":
            for m in v:
                if isinstance(m.get("content"), str):
                    m["content"] = fix(m["content"])
    return flags


def _validation_reason(e: ValidationError) -> str:
    msg = str(e)
    if "non-empty" in msg:
        return "empty"
    return "invalid_record"


def build_records(it: Item, cfg: IngestConfig, chunker: Chunker) -> list[Record]:
    """The records of one item (several when a raw document is chunked); raises SchemaError."""
    fields = recognise(it.value)
    flags = list(it.flags) + _normalise(fields)
    loc = it.loc
    name = it.where or loc["path"]  # the file named from the user's source, not from where it lies
    doc = it.doc or row_doc(it.value) or (name if "line" not in loc and "item" not in loc
                                          else f"{name}:{loc.get('line', loc.get('item'))}")
    source = {k: v for k, v in loc.items() if k in ("path", "line", "item", "split")} | {"doc": doc}
    domain = cfg.domain or it.domain or row_domain(it.value)
    meta = add_repaired(dict(it.meta), *flags)
    if fields["kind"] == "raw":
        text = fields["text"]
        if len(text) > cfg.max_doc_chars:
            raise SchemaError("oversized", f"{len(text)} chars > max_doc_chars {cfg.max_doc_chars}")
        if not text.strip():
            raise SchemaError("empty", "text is empty")
        parts = chunker.chunks(text)
        if len(parts) == 1:
            return [Record(kind="raw", text=parts[0], domain=domain, source=source, meta=meta)]
        return [Record(kind="raw", text=p, domain=domain, source=source | {"chunk": i},
                       meta=meta | {"chunks": len(parts)}) for i, p in enumerate(parts)]
    if content_chars(fields) > cfg.max_record_chars:
        raise SchemaError("oversized", f"{content_chars(fields)} chars > max_record_chars {cfg.max_record_chars}")
    return [Record(**fields, domain=domain, source=source, meta=meta)]


def ingest(paths: list[str], out_dir: str | Path, cfg: IngestConfig | None = None) -> dict:
    """Read every source into `out_dir`; returns the data card (also written there)."""
    cfg = cfg or IngestConfig()
    missing = missing_sources([str(x) for x in paths])
    if missing:  # checked before any output exists
        raise UserError("cannot ingest: " + "; ".join(missing))
    chunker = Chunker(cfg.chunk_tokens)
    with atomic_dir(out_dir) as tmp:
        with atomic_open(tmp / RECORDS_FILE) as rf, atomic_open(tmp / QUARANTINE_FILE) as qf, \
                bar(disable=not cfg.progress) as pb:
            ledger = Ledger("ingest", qf)
            for spec in paths:
                task = pb.add_task(str(spec)[-40:], total=None, info="")
                n = 0
                for it in islice(read_source(spec, cfg.max_file_bytes), cfg.limit):
                    _one(it, cfg, chunker, ledger, rf)
                    n += 1
                    if n % 2000 == 0:
                        pb.update(task, completed=n, info=f"{ledger.totals()['records']} records")
                pb.update(task, completed=n, total=n, info=f"{ledger.totals()['records']} records")
        card = build_card(tmp, ledger.summary(), eval_frac=cfg.eval_frac, seed=cfg.seed,
                          token_sample=cfg.token_sample, config={"inputs": [str(p) for p in paths],
                                                                 **cfg.model_dump()})
        write_json(tmp / CARD_FILE, card)
    return card


def _one(it: Item | Bad, cfg: IngestConfig, chunker: Chunker, ledger: Ledger, rf) -> None:
    path = it.loc.get("path", "?")
    ledger.read(path)
    if isinstance(it, Bad):
        ledger.quarantine(it.loc, it.reason, it.detail, it.snippet)
        return
    try:
        recs = build_records(it, cfg, chunker)
    except SchemaError as e:
        ledger.quarantine(it.loc, e.reason, str(e), it.value)
        return
    except ValidationError as e:
        ledger.quarantine(it.loc, _validation_reason(e), str(e).replace("\n", " "), it.value)
        return
    for r in recs:
        rf.write(json.dumps(r.to_json(), ensure_ascii=False))
        rf.write("\n")
    ledger.keep(path, len(recs), recs[0].meta.get("repaired", ()))
