"""The data card: what a records folder holds, where it came from, and how it splits.

Written as `data_card.json` next to records.jsonl by every stage. Computed in one
streaming pass over the folder's files (constant memory; the exact sets of documents
and content ids are capped at `TRACK_CAP` entries, beyond which document counts are
HyperLogLog estimates and duplicate counts are marked incomplete).

Contents:
  records          total, by kind, by domain, by source path
  documents        distinct documents (source.doc), exact or estimated
  duplicates       records whose content id was already seen (exact duplicates)
  token_lengths    histogram of SmolLM2 token counts over a seeded sample of records
                   (the record's text as the model sees it: all turns joined)
  split            the seeded train/eval split by document (loralab.data.split):
                   records and documents per side, and the eval documents themselves
                   (listed when few, always as a sha256 digest of the sorted list)
  quarantine       quarantined items by reason
  reconciliation   per input file read = kept + quarantined, for this stage
  stages           the reconciliation of every stage that led to this folder
  checks           the files agree with the reconciliation (records / quarantine lines)
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from pathlib import Path

from ..io import read_json
from .records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record, to_messages
from .split import is_eval

TRACK_CAP = 500_000
LIST_CAP = 2_000
BINS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


class _Distinct:
    """Exact distinct count up to TRACK_CAP, then a HyperLogLog estimate."""

    def __init__(self):
        self.exact: set | None = set()
        self.hll = None

    def add(self, key: str) -> bool:
        """Adds key; True when it was seen before (only known while exact)."""
        if self.exact is None:
            self.hll.update(key.encode())
            return False
        if key in self.exact:
            return True
        self.exact.add(key)
        if len(self.exact) > TRACK_CAP:  # switch to an estimate, seeded with everything seen so far
            from datasketch import HyperLogLog

            self.hll = HyperLogLog(p=12)
            for k in self.exact:
                self.hll.update(k.encode())
            self.exact = None
        return False

    def count(self) -> dict:
        if self.exact is not None:
            return {"count": len(self.exact), "exact": True}
        return {"count": int(self.hll.count()), "exact": False}


def record_text(rec: Record) -> str:
    return "\n".join(m["content"] for m in to_messages(rec))


def histogram(lengths: list[int]) -> dict:
    counts = Counter()
    for n in lengths:
        label = next((f"<={b}" for b in BINS if n <= b), f">{BINS[-1]}")
        counts[label] += 1
    order = [f"<={b}" for b in BINS] + [f">{BINS[-1]}"]
    s = sorted(lengths)
    stats = {}
    if s:
        stats = {"min": s[0], "p50": s[len(s) // 2], "p90": s[int(len(s) * 0.9)], "max": s[-1],
                 "mean": round(sum(s) / len(s), 1)}
    return {"bins": {k: counts[k] for k in order if counts[k]}, **stats}


def _token_lengths(texts: list[str]) -> list[int]:
    if not texts:
        return []
    from .chunk import _tokenizer

    tok = _tokenizer()
    return [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]


def build_card(folder: str | Path, summary: dict, *, eval_frac: float = 0.1, seed: int = 0,
               token_sample: int = 2000, prior: dict | None = None, config: dict | None = None) -> dict:
    """Card of the records folder `folder` produced by the stage described by `summary`."""
    folder = Path(folder)
    kinds, domains, sources = Counter(), Counter(), Counter()
    docs, ids, eval_docs = _Distinct(), _Distinct(), _Distinct()
    side = Counter()
    dups = 0
    rng = random.Random(seed)
    sample: list[str] = []
    n = 0
    with open(folder / RECORDS_FILE, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)  # plain JSON: validating every record again would double the cost
            src = row.get("source") or {}
            kinds[row["kind"]] += 1
            domains[row.get("domain") or "none"] += 1
            sources[str(src.get("path", "?"))] += 1
            dups += ids.add(row["id"])
            d = str(src.get("doc") or src.get("path") or row["id"])  # == split.doc_key
            docs.add(d)
            ev = is_eval(d, eval_frac, seed)
            side["eval" if ev else "train"] += 1
            if ev:
                eval_docs.add(d)
            if len(sample) < token_sample:  # reservoir sample: every record equally likely
                sample.append(line)
            elif (j := rng.randrange(n + 1)) < token_sample:
                sample[j] = line
            n += 1
    sample = [record_text(Record.model_validate_json(x)) for x in sample]
    reasons, q_lines = Counter(), 0
    qpath = folder / QUARANTINE_FILE
    if qpath.exists():
        with open(qpath, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    reasons[json.loads(line)["reason"]] += 1
                    q_lines += 1
    ed = eval_docs.exact
    split = {"eval_frac": eval_frac, "seed": seed, "by": "source.doc",
             "records": {"train": side["train"], "eval": side["eval"]}, "eval_documents": eval_docs.count()}
    if ed is not None:
        listed = sorted(ed)
        split["eval_docs_sha256"] = hashlib.sha256("\n".join(listed).encode()).hexdigest()
        if len(listed) <= LIST_CAP:
            split["eval_docs"] = listed
    totals = summary["totals"]
    stages = list((prior or {}).get("stages", [])) + [summary]
    return {
        "stage": summary["stage"],
        "records": {"total": n, "by_kind": dict(kinds.most_common()), "by_domain": dict(domains.most_common()),
                    "by_source": dict(sources.most_common())},
        "documents": docs.count(),
        "duplicates": {"count": dups, "complete": ids.exact is not None},
        "token_lengths": {"sampled": len(sample), "of": n, "seed": seed, **histogram(_token_lengths(sample))},
        "split": split,
        "quarantine": {"total": q_lines, "by_reason": dict(reasons.most_common())},
        "reconciliation": summary,
        "stages": stages,
        "checks": {"records_match": n == totals["records"], "quarantine_match": q_lines == totals["quarantined"],
                   "balanced": totals["balanced"]},
        "config": config or {},
    }


def read_card(folder: str | Path) -> dict | None:
    p = Path(folder) / CARD_FILE
    return read_json(p) if p.exists() else None


def _stages_of(card: dict | None) -> list[dict]:
    """The stage chain of a card; cards of the older score/select schema are read too."""
    if not card:
        return []
    if "stages" in card:
        return list(card["stages"])
    c = card.get("counts") or {}
    summary = {"stage": card.get("stage", "?"),
               "files": [{"path": str(card.get("input", "?")), "read": c.get("read", 0), "kept": c.get("kept", 0),
                          "quarantined": c.get("quarantined", 0), "records": c.get("kept", 0), "repaired": 0,
                          "balanced": bool(c.get("reconciled"))}],
               "totals": {"read": c.get("read", 0), "kept": c.get("kept", 0), "quarantined": c.get("quarantined", 0),
                          "records": c.get("kept", 0), "repaired": 0, "balanced": bool(c.get("reconciled"))},
               "quarantine_reasons": dict(card.get("quarantine_reasons") or {}), "repairs": {}}
    return _stages_of(card.get("upstream_card")) + [summary]


def stage_card(folder: str | Path, stage: str, *, source: str, read: int, prior: dict | None,
               config: dict | None = None, **extra) -> dict:
    """The data card of a stage that keeps or drops whole records (score, select): same schema as
    ingest/clean/structure (records, documents, split, quarantine, reconciliation, stages, checks),
    computed from the files already written in `folder`, plus the stage's own `extra` fields."""
    folder = Path(folder)
    reasons: Counter = Counter()
    q = folder / QUARANTINE_FILE
    if q.exists():
        with open(q, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    reasons[str(json.loads(line).get("reason", "?")).split(":")[0]] += 1
    with open(folder / RECORDS_FILE, encoding="utf-8") as f:
        kept = sum(1 for line in f if line.strip())
    quarantined = sum(reasons.values())
    totals = {"read": read, "kept": kept, "quarantined": quarantined, "records": kept, "repaired": 0,
              "balanced": read == kept + quarantined}
    summary = {"stage": stage, "files": [{"path": source, **totals}], "totals": totals,
               "quarantine_reasons": dict(reasons.most_common()), "repairs": {}}
    split = (prior or {}).get("split") or {}
    card = build_card(folder, summary, eval_frac=split.get("eval_frac", 0.1), seed=split.get("seed", 0),
                      prior={"stages": _stages_of(prior)}, config=config)
    card.update(extra)
    return card
