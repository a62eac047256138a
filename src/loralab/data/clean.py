"""`loralab data clean IN --out DIR`: repair what can be repaired, drop what cannot be used.

    loralab data clean data/raw --out data/clean --near-dup 0.8 --language en

Repairs (record kept, reason appended to meta["repaired"], meta["cleaned_from"] = old id):
  ftfy                 mojibake and broken unicode fixed by ftfy (quotes left as written)
  dehyphenated         "exam-\\nple" -> "example"
  boilerplate_removed  page-number lines, and short lines repeated in >= `repeat_min`
                       chunks of one document (running headers / footers)
Removals (quarantined with the reason as code):
  empty / too_short / too_long   length bounds on the record's text (all fields)
  garbage              garbage-character share above `max_garbage` (U+FFFD, controls, symbols)
  mixed_scripts        share of words mixing scripts above `max_mixed_scripts`
  wrong_language       recognised as another language than `language` (texts of at least
                       `min_words` words; text where no language is recognised is kept)
  duplicate            same content id as an earlier record
  near_duplicate       MinHash (word 3-shingles) Jaccard >= `near_dup` with an earlier kept record
Memory: the content ids and MinHash signatures of kept records stay in memory (about
0.6 KB per record at 64 permutations), and a first pass collects short lines of chunked
documents; records themselves stream. The detail of a duplicate names the record it duplicates. Order: repairs, then the
quality checks, then exact and near dedupe, so a repaired copy can still be found a duplicate.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field

from ..config import StageConfig
from . import noise
from .card import record_text
from .ledger import add_repaired
from .records import RECORDS_FILE, Record
from .split import doc_key
from .stage import Reject, run_stage, set_text_fields, text_fields, with_content


class CleanConfig(StageConfig):
    """Settings of `clean`."""

    min_chars: int = Field(20, ge=0, description="Records with fewer characters (all text fields) are dropped.")
    max_chars: int = Field(50_000, ge=1, description="Records with more characters are dropped.")
    max_garbage: float = Field(0.2, ge=0, le=1, description="Largest share of garbage characters kept.")
    max_mixed_scripts: float = Field(0.1, ge=0, le=1, description="Largest share of mixed-script words kept.")
    language: str | None = Field("en", description="Language kept (en, fr, de, es, it, pt, nl; judged by "
                                 "function-word shares, see noise.guess_language); None keeps all.")
    min_share: float = Field(0.1, ge=0, le=1, description="Function-word share a language needs to be recognised; "
                             "texts where none reaches it are kept (not judged).")
    min_words: int = Field(15, ge=1, description="Texts with fewer words are not judged for language.")
    near_dup: float = Field(0.8, gt=0, le=1, description="MinHash Jaccard threshold for near duplicates; 1 = off.")
    num_perm: int = Field(64, ge=16, description="MinHash permutations (more = finer estimate, slower).")
    repeat_min: int = Field(3, ge=2, description="A short line repeated in this many chunks of a document is "
                            "a header/footer and is removed.")
    ftfy: bool = Field(True, description="Repair broken unicode with ftfy.")
    dehyphenate: bool = Field(True, description="Join words hyphenated across line breaks.")
    progress: bool = Field(True, description="Show a progress bar.")


def repeated_lines(in_dir: str | Path, repeat_min: int) -> dict[str, set[str]]:
    """First pass: per document, short lines that occur in >= repeat_min of its chunks."""
    counts: dict[str, Counter] = defaultdict(Counter)
    from .records import read_records

    for rec in read_records(Path(in_dir) / RECORDS_FILE, skip_invalid=True):  # run_stage quarantines them
        if rec.kind == "raw" and rec.source.get("chunk") is not None:
            counts[doc_key(rec)].update(noise.short_lines(rec.text))
    return {d: {s for s, n in c.items() if n >= repeat_min} for d, c in counts.items()
            if any(n >= repeat_min for n in c.values())}


def _ftfy(text: str) -> str:
    import ftfy

    return ftfy.fix_text(text, uncurl_quotes=False)


def repair(rec: Record, cfg: CleanConfig, repeated: set[str]) -> Record:
    """The record with its text repaired; unchanged (same object) when nothing applied."""
    fields, flags = text_fields(rec), []
    for k, v in fields.items():
        new = v
        if cfg.ftfy and (f := _ftfy(new)) != new:
            new, _ = f, flags.append("ftfy")
        if cfg.dehyphenate:
            new, n = noise.dehyphenate(new)
            if n:
                flags.append("dehyphenated")
        if rec.kind == "raw":
            new, n = noise.strip_boilerplate(new, repeated)
            if n:
                flags.append("boilerplate_removed")
        fields[k] = new
    if not flags:
        return rec
    meta = add_repaired(dict(rec.meta), *flags)
    return with_content(rec, set_text_fields(rec, fields), **{**meta, "cleaned_from": rec.id})


def check(rec: Record, cfg: CleanConfig) -> Reject | None:
    text = record_text(rec)
    n = len(text.strip())
    if n == 0:
        return Reject("empty", "no text left after repair")
    if n < cfg.min_chars:
        return Reject("too_short", f"{n} chars < min_chars {cfg.min_chars}")
    if n > cfg.max_chars:
        return Reject("too_long", f"{n} chars > max_chars {cfg.max_chars}")
    if (g := noise.garbage_ratio(text)) > cfg.max_garbage:
        return Reject("garbage", f"garbage characters {g:.2f} > {cfg.max_garbage}")
    if (m := noise.mixed_script_ratio(text)) > cfg.max_mixed_scripts:
        return Reject("mixed_scripts", f"mixed-script words {m:.2f} > {cfg.max_mixed_scripts}")
    if cfg.language and len(text.split()) >= cfg.min_words:
        lang = noise.guess_language(text, cfg.min_share)
        if lang is not None and lang != cfg.language:
            return Reject("wrong_language", f"looks like {lang}, not {cfg.language}")
    return None


class NearDup:
    """MinHash LSH over word 3-shingles; remembers kept records only."""

    def __init__(self, threshold: float, num_perm: int):
        from datasketch import MinHashLSH

        self.on = threshold < 1.0
        self.threshold = threshold
        self.num_perm = num_perm
        self.lsh = MinHashLSH(threshold=threshold, num_perm=num_perm) if self.on else None
        self.hashes: dict = {}

    def minhash(self, text: str):
        from datasketch import MinHash

        words = text.lower().split()
        shingles = {" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2))}
        m = MinHash(num_perm=self.num_perm, seed=1)
        m.update_batch([s.encode() for s in shingles])
        return m

    def match(self, key: str, text: str) -> tuple[str, float] | None:
        """(id of a near duplicate already kept, estimated Jaccard) or None (then `key` is kept)."""
        if not self.on:
            return None
        m = self.minhash(text)
        for other in self.lsh.query(m):  # LSH candidates may fall below the threshold: check the estimate
            if (j := m.jaccard(self.hashes[other])) >= self.threshold:
                return other, j
        self.lsh.insert(key, m)
        self.hashes[key] = m
        return None


def _process(cfg: CleanConfig, repeated: dict[str, set[str]]):
    def process(items: Iterable[tuple[dict, Record]]) -> Iterator:
        seen: dict[str, int] = {}
        near = NearDup(cfg.near_dup, cfg.num_perm)
        for loc, rec in items:
            fixed = repair(rec, cfg, repeated.get(doc_key(rec), set()))
            bad = check(fixed, cfg)
            if bad is None and fixed.id in seen:
                bad = Reject("duplicate", f"same content as the record on line {seen[fixed.id]} (id {fixed.id})")
            if bad is None and (hit := near.match(fixed.id, record_text(fixed))):
                bad = Reject("near_duplicate", f"Jaccard ~{hit[1]:.2f} with kept record {hit[0]}")
            if bad is None:
                seen[fixed.id] = loc["line"]
            yield loc, rec, bad or [fixed]
    return process


def clean(in_dir: str | Path, out_dir: str | Path, cfg: CleanConfig | None = None) -> dict:
    """Clean the records of `in_dir` into `out_dir`; returns the data card."""
    cfg = cfg or CleanConfig()
    repeated = repeated_lines(in_dir, cfg.repeat_min)
    return run_stage("clean", in_dir, out_dir, _process(cfg, repeated), config=cfg.model_dump(),
                     progress=cfg.progress)
