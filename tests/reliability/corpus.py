"""The bad-input corpus, generated (never committed): every file a user may hand loralab by
mistake, each with what it is meant to exercise.

    from corpus import data_cases, yaml_cases
    cases = data_cases(tmp_path, full=False)   # full=True adds the 100 MB single line

A case is (name, path, note). Data cases go to `loralab data ingest`; YAML cases go to
every YAML loader (train configs, study specs).
"""

from __future__ import annotations

import codecs
import gzip
import io
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path

GOOD = [{"prompt": f"What is item {i}?", "response": f"Item {i} is a test answer about bees."} for i in range(6)]


@dataclass
class Case:
    name: str
    path: Path
    note: str


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _parquet_bytes() -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(GOOD), buf)
    return buf.getvalue()


def _arrow_bytes() -> bytes:
    import pyarrow as pa

    t = pa.Table.from_pylist(GOOD)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, t.schema) as w:
        w.write_table(t)
    return sink.getvalue().to_pybytes()


def data_cases(root: Path, *, full: bool = False, seed: int = 0) -> list[Case]:
    """Write the data corpus under `root`; returns its cases."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    cases: list[Case] = []

    def add(name: str, data: bytes | None, note: str) -> Path:
        p = root / name
        if data is not None:
            p.write_bytes(data)
        cases.append(Case(name, p, note))
        return p

    good = _jsonl(GOOD)
    add("invalid_utf8.txt", b"Bees make honey.\n\xc3\x28 broken \xff byte\nThe hive is warm.\n", "invalid UTF-8")
    add("mixed_encoding.jsonl", good + json.dumps({"text": "caf\u00e9 latin"}).encode("latin-1") + b"\n"
        + '{"text": "caf\xe9 utf8"}\n'.encode(), "one line in Latin-1 among UTF-8 lines")
    add("bom.jsonl", codecs.BOM_UTF8 + good, "UTF-8 BOM before JSONL")
    add("utf16.txt", "Bees dance to show where flowers are.\n".encode("utf-16"), "UTF-16 with BOM")
    add("crlf.md", b"# Hive\r\n\r\nSmoke calms the bees.\r\n", "CRLF line ends")
    add("nul_bytes.txt", b"text\x00\x00\x01binary" * 50, "NUL bytes: a binary file named .txt")
    add("nul_line.jsonl", good + b'{"text": "a\x00b"}\n' + good, "one line with a NUL byte")
    add("random_binary.txt", bytes(rng.randrange(256) for _ in range(4096)), "random bytes named .txt")
    add("gzip.jsonl", gzip.compress(good), "gzip data named .jsonl")
    add("gzip.txt", gzip.compress(b"Bees.\n" * 100), "gzip data named .txt")
    add("truncated.json", json.dumps(GOOD).encode()[:-17], "JSON cut mid-object")
    add("truncated.jsonl", good[:-9], "JSONL whose last line is cut")
    pq_bytes = _parquet_bytes()
    add("truncated.parquet", pq_bytes[: len(pq_bytes) // 2], "Parquet cut in half")
    ar = _arrow_bytes()
    add("truncated.arrow", ar[: len(ar) * 2 // 3], "Arrow stream cut at two thirds")
    add("garbage.parquet", b"PAR1" + bytes(rng.randrange(256) for _ in range(300)), "Parquet magic, garbage body")
    add("wrong_types.jsonl", _jsonl([{"text": 5}, {"prompt": ["a"], "response": {"x": 1}}, [1, 2], "a string",
                                     None, {"messages": "not a list"}, {"messages": [{"role": 3}]},
                                     {"prompt": "ok?", "response": "ok."}]), "wrong JSON types per line")
    add("deep.json", b"[" * 200_000 + b"]" * 200_000, "JSON nested 200,000 deep")
    add("deep.jsonl", good + b"[" * 200_000 + b"]" * 200_000 + b"\n" + good, "a JSONL line nested 200,000 deep")
    add("deep_object.jsonl", (json.dumps({"text": "x"})[:-1] + ', "m": ' + "{\"a\": " * 5000 + "1" + "}" * 5000
                              + "}\n").encode() + good, "a JSONL record with a 5,000-deep field")
    add("bomb.yaml", _yaml_bomb().encode(), "YAML alias bomb (billion laughs)")
    add("tag.yaml", b"!!python/object/apply:os.system ['echo owned > /tmp/loralab_owned']\n",
        "YAML tag that would construct an object")
    add("empty.jsonl", b"", "empty file")
    add("blank.txt", b"\n\n   \n", "only whitespace")
    add("csv_ragged.csv", b"prompt,response\nq1,a1\nq2\n\"unterminated,a3\nq4,a4,extra\n", "ragged CSV")
    empty = root / "empty_dir"
    empty.mkdir(exist_ok=True)
    cases.append(Case("empty_dir", empty, "an empty folder"))
    loop = root / "loop_dir"
    loop.mkdir(exist_ok=True)
    (loop / "notes.md").write_text("# Bees\n\nA colony has one queen.\n")
    if not (loop / "self").exists():
        os.symlink(loop, loop / "self")
        os.symlink(loop / "missing_target", loop / "dangling.txt")
    cases.append(Case("loop_dir", loop, "folder with a symlink loop and a dangling symlink"))
    unreadable = add("unreadable.txt", b"secret\n", "file without read permission")
    os.chmod(unreadable, 0)
    big = 100 * 2**20 if full else 3 * 2**20
    add("long_line.txt", b"bee " * (big // 4), f"a single {big // 2**20} MB line")
    return cases


def _yaml_bomb(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        refs = ",".join([f"*a{i - 1}"] * 9)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def yaml_cases(root: Path) -> list[Case]:
    """YAML files every YAML loader must refuse with one line (configs, study specs)."""
    root.mkdir(parents=True, exist_ok=True)
    cases = []

    def add(name: str, text: bytes, note: str) -> None:
        p = root / name
        p.write_bytes(text)
        cases.append(Case(name, p, note))

    add("bomb.yaml", _yaml_bomb().encode(), "alias bomb")
    add("tag.yaml", b"steps: !!python/object/apply:os.system ['echo owned > /tmp/loralab_owned']\n",
        "object-constructing tag")
    add("deep.yaml", b"a: " + b"[" * 50_000 + b"]" * 50_000 + b"\n", "nested 50,000 deep")
    add("not_mapping.yaml", b"- just\n- a list\n", "a list, not a mapping")
    add("binary.yaml", gzip.compress(b"steps: 3\n"), "gzip bytes named .yaml")
    add("invalid_utf8.yaml", b"steps: \xff\xfe3\n", "invalid UTF-8")
    add("syntax.yaml", b"steps: [1, 2\nlr: :\n", "YAML syntax error")
    add("wrong_types.yaml", b"steps: many\nlr: -1\nrank: [8]\n", "wrong types and out-of-range values")
    add("unknown_keys.yaml", b"stepz: 3\nlearning_rate: 0.1\n", "misspelt keys")
    return cases
