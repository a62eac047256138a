"""Retrieval measured on a labelled question set: recall of the answer-bearing chunk.

    from loralab.evaluate.retrieval import read_questions, retrieval_recall
    rep = retrieval_recall(open_index("idx/"), read_questions("benchmarks/retrieval/questions.jsonl"),
                           ks=(1, 3, 5), mode="hybrid")
    rep["by"]["lang=ru"]["recall@3"]     # {"mean", "lo", "hi", "n"}: bootstrap over questions
"""

from __future__ import annotations

from typing import Sequence

from .stats import bootstrap_ci


def read_questions(path) -> list[dict]:
    """A retrieval question set (JSONL: id, lang, question, doc, answer); a bad line is a UserError."""
    from ..io import read_user_jsonl

    return read_user_jsonl(path, ("id", "question", "doc", "answer"))


def retrieval_recall(index, questions: Sequence[dict], ks: Sequence[int] = (1, 3, 5), mode: str = "dense",
                     seed: int = 0) -> dict:
    """Recall@k of the answer-bearing chunk: a question is a hit at k when one of its top-k passages
    comes from its `doc` and contains its `answer` span (and "doc@k": from its doc at all); overall
    and by `lang`, with bootstrap intervals over questions; the misses at the largest k listed."""
    kmax = max(ks)
    sources = {c["source"] for c in index.chunks}
    absent = [q["id"] for q in questions if q["doc"] not in sources]
    if absent:
        from ..errors import UserError

        raise UserError(f"{len(absent)} question(s) name a doc the index does not hold (first: {absent[0]}); "
                        "index the documents they are about")
    hits = index.search([q["question"] for q in questions], kmax, mode=mode)
    per: dict[str, dict[str, list[float]]] = {}
    misses = []
    for q, ps in zip(questions, hits):
        rank = next((n for n, p in enumerate(ps, 1) if p.source == q["doc"] and q["answer"] in p.text), None)
        drank = next((n for n, p in enumerate(ps, 1) if p.source == q["doc"]), None)
        for group in ("all", f"lang={q.get('lang', '?')}"):
            g = per.setdefault(group, {})
            for k in ks:
                g.setdefault(f"recall@{k}", []).append(float(rank is not None and rank <= k))
                g.setdefault(f"doc@{k}", []).append(float(drank is not None and drank <= k))
        if rank is None:
            misses.append({"id": q["id"], "question": q["question"], "top": [p.source for p in ps]})
    return {"n": len(questions), "mode": mode, "embedder": index.embedder, "chunks": len(index),
            "by": {g: {m: bootstrap_ci(v, seed=seed) for m, v in ms.items()} for g, ms in per.items()},
            "misses": misses}
