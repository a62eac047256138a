"""`loralab data corrupt IN --out DIR --rate R --seed S`: seeded OCR-like noise, for studying
what noisy data does to an adapter (and what `clean` gets back).

    loralab data corrupt data/clean --out data/noisy --rate 0.05 --seed 0

The noise (noise.inject: character confusions rn->m, l->1, O->0, e->c, ...; dropped
spaces; broken lines; hyphenation at a line break) hits the response: raw text, a Q&A
answer, an instruction's output, a chat's last assistant turn. Prompts stay clean, so
the study varies the learned target only. Each record's noise is drawn from
random.Random(f"{seed}:{record id}"): the same record gets the same noise whatever the
order or the other records. Outputs keep source (same document, same split side) and
carry meta["corrupted_from"] = the clean record's id and meta["corruption"] = counts.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Iterable, Iterator

from pydantic import Field

from ..config import StageConfig
from . import noise
from .records import Record
from .stage import run_stage, with_content

RESPONSE = {"raw": "text", "qa": "answer", "instruction": "output"}


def corrupt_record(rec: Record, rate: float, seed: int) -> Record:
    rng = random.Random(f"{seed}:{rec.id}")
    content = rec.content()
    if rec.kind == "chat":
        msgs = [dict(m) for m in content["messages"]]
        if msgs[-1]["role"] != "assistant":
            return with_content(rec, {}, corrupted_from=rec.id, corruption={"rate": rate, "seed": seed, "ops": {}})
        msgs[-1]["content"], ops = noise.inject(msgs[-1]["content"], rate, rng)
        fields = {"messages": msgs}
    else:
        key = RESPONSE[rec.kind]
        new, ops = noise.inject(content[key], rate, rng)
        fields = {key: new if new.strip() else content[key]}  # never blank a response out
    return with_content(rec, fields, corrupted_from=rec.id, corruption={"rate": rate, "seed": seed, "ops": ops})


class CorruptConfig(StageConfig):
    """Settings of `corrupt`."""

    rate: float = Field(0.05, ge=0, le=1, description="Probability of a noise operation at each character.")
    seed: int = Field(0, description="Noise seed (combined with each record's id).")
    progress: bool = Field(True, description="Show a progress bar.")


def corrupt(in_dir: str | Path, out_dir: str | Path, rate: float | CorruptConfig = 0.05, seed: int = 0,
            progress: bool = True) -> dict:
    """Noisy copies of the records of `in_dir` in `out_dir`; returns the data card.

    Takes the rate and seed directly, or a CorruptConfig in place of `rate`.
    """
    cfg = rate if isinstance(rate, CorruptConfig) else CorruptConfig(rate=rate, seed=seed, progress=progress)

    def process(items: Iterable[tuple[dict, Record]]) -> Iterator:
        for loc, rec in items:
            yield loc, rec, [corrupt_record(rec, cfg.rate, cfg.seed)]

    return run_stage("corrupt", in_dir, out_dir, process, config=cfg.model_dump(), progress=cfg.progress)
