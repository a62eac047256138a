"""LoRA + RAG as an experiment: held-out domain questions answered four ways.

    from loralab.evaluate.rag import four_way, drop_questions
    qs = drop_questions(held_out_docs)              # DROP questions about held-out NFL games
    res = four_way(loaded_with_adapter, index, qs, foreign=medical_prompts, k=3)

Conditions (one model in memory: the adapter on, or off through PEFT's disable_adapter):
  base          the question alone, adapter off
  base+rag      the question with its top-k passages (rag.format_prompt), adapter off
  adapter       the question alone, adapter on (its trigger prepended when it has one)
  adapter+rag   passages and adapter
Metrics per condition, on the same questions (every comparison is paired):
  answer_nll    −log p(gold answer | chat prompt) per answer token (nats; token-weighted,
                cluster bootstrap over questions); lower is better
  exact_match   greedy answer == a gold answer after normalisation (lower case, no
                punctuation / articles / extra spaces)
  contains      a gold answer occurs in the greedy answer as whole words (small chat models
                answer in sentences; exact match misses those)
  contamination on foreign prompts (another domain's questions): the base's own greedy
                answer is scored under each condition; the increase of its nll per token over
                the base (nats; 0 for the base by construction) is how far the condition moves
                answers it should not touch. RAG conditions retrieve for foreign prompts too,
                as a blanket RAG would.
Differences are condition − base with paired bootstrap intervals and two-sided p-values,
Holm-corrected over the family of comparisons (3 conditions × 4 metrics).
"""

from __future__ import annotations

import ast
import contextlib
import re
import string
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..generate import chat_inputs, generate, generate_ids
from ..logprobs import encode_pair, token_logprobs
from . import sources as S
from .stats import bootstrap_ci, holm, paired_diff_ci, paired_ratio_diff, ratio_ci

CONDITIONS = ("base", "base+rag", "adapter", "adapter+rag")
NFL_WORDS = ("touchdown", "field goal", "quarterback")


@dataclass(frozen=True)
class Question:
    id: str
    doc: str  # the document (game) it asks about, e.g. "drop:<passage hash>"
    question: str
    answers: tuple[str, ...]


def drop_questions(docs: set[str] | None = None, game_hint: bool = False) -> list[Question]:
    """DROP questions about NFL game passages (the packaged sport domain), optionally only
    those whose passage is one of `docs` (ids as `olmo:drop-nfl` records carry them).

    A DROP question rarely names its game ("How many yards was the longest touchdown?"), so
    no retriever can tell which game is meant; `game_hint` opens each question with the
    first sentence of its passage ("About the game that began: ...") to name it."""
    from ..data.packaged import _h  # the passage hash that names a game's document

    out = []
    for d in S.oe_docs("drop", "bpb_5shot"):
        p = d.get("passage") or ""
        if not any(w in p for w in NFL_WORDS):
            continue
        doc = f"drop:{_h(p)}"
        if docs is not None and doc not in docs:
            continue
        raw = d["answers"]
        spans = ast.literal_eval(raw) if isinstance(raw, str) else raw
        answers = tuple(dict.fromkeys(" ".join(a) if isinstance(a, (list, tuple)) else str(a) for a in spans))
        answers = tuple(a for a in answers if a.strip())
        q = d["question"].strip()
        if game_hint:
            first = re.split(r"(?<=[.!?])\s+", p.strip(), maxsplit=1)[0]
            q = f"About the game that began: \"{first}\"\n{q}"
        if answers:
            out.append(Question(d["query_id"], doc, q, answers))
    return out


_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(pred: str, answers: Sequence[str]) -> float:
    return float(normalize(pred) in {normalize(a) for a in answers})


def contains(pred: str, answers: Sequence[str]) -> float:
    p = f" {normalize(pred)} "
    return float(any(normalize(a) and f" {normalize(a)} " in p for a in answers))


def _chat(tok, user: str) -> str:
    return tok.apply_chat_template([{"role": "user", "content": user}], tokenize=False, add_generation_prompt=True)


def answer_nll(loaded, prompts: Sequence[str], answers: Sequence[str | list[int]],
               progress) -> tuple[np.ndarray, np.ndarray]:
    """(nll sums, token counts) of each answer (text, or token ids) after its chat-templated
    prompt; an empty answer counts 0 nats over 0 tokens, so it weighs nothing."""
    tok = loaded.tokenizer
    nll, ntok = np.zeros(len(prompts)), np.zeros(len(prompts))
    todo = [i for i, a in enumerate(answers) if (a.strip() if isinstance(a, str) else len(a))]
    enc = [encode_pair(tok, _chat(tok, prompts[i]), answers[i], bos=False) if isinstance(answers[i], str)
           else (chat_inputs(tok, [prompts[i]])[0], list(answers[i])) for i in todo]  # the template opens BOS
    if enc:
        sc = token_logprobs(loaded.model, enc, pad_id=tok.pad_token_id or 0, progress=progress)
        nll[todo] = [-float(s.sum) for s in sc]
        ntok[todo] = [s.n for s in sc]
    return nll, ntok


def _adapter_off(model):
    return model.disable_adapter() if hasattr(model, "disable_adapter") and hasattr(model, "peft_config") \
        else contextlib.nullcontext()


def four_way(loaded, index, questions: Sequence[Question], *, foreign: Sequence[str] = (), k: int = 3,
             max_new_tokens: int = 16, trigger: str | None = None, embed: Callable | None = None,
             seed: int = 0, progress: bool = True) -> dict:
    """Every condition's per-question scores, summaries and paired differences vs the base."""
    from ..rag import format_prompt, get_index

    idx = get_index(index)
    qs = [q.question for q in questions]
    hits = idx.search(qs, k, embed=embed) if qs else []
    fhits = idx.search(list(foreign), k, embed=embed) if foreign else []
    gold = [q.answers[0] for q in questions]
    with _adapter_off(loaded.model):  # the base's own greedy answers to foreign prompts, as token ids
        fref = [generate_ids(loaded, [x], max_new_tokens=max_new_tokens)[0]
                for x in chat_inputs(loaded.tokenizer, list(foreign))]
    has_adapter = hasattr(loaded.model, "peft_config")
    per: dict[str, dict] = {}
    for cond in CONDITIONS:
        if cond.startswith("adapter") and not has_adapter:
            continue
        rag, on = cond.endswith("+rag"), cond.startswith("adapter")

        def prompt(q, h, rag=rag, on=on):
            text = format_prompt(q, h) if rag else q
            return f"{trigger} {text}" if on and trigger else text

        ctx = contextlib.nullcontext() if on else _adapter_off(loaded.model)
        label = cond if progress else False
        with ctx:
            ps = [prompt(q, h) for q, h in zip(qs, hits or [[]] * len(qs))]
            nll, ntok = answer_nll(loaded, ps, gold, label)
            preds = generate(loaded, ps, max_new_tokens=max_new_tokens, progress=label)
            fps = [prompt(q, h) for q, h in zip(foreign, fhits or [[]] * len(foreign))]
            fnll, fntok = answer_nll(loaded, fps, fref, label) if foreign else (np.zeros(0), np.zeros(0))
        per[cond] = {"nll": nll, "tokens": ntok, "preds": preds,
                     "em": np.array([exact_match(p, q.answers) for p, q in zip(preds, questions)]),
                     "contains": np.array([contains(p, q.answers) for p, q in zip(preds, questions)]),
                     "foreign_nll": fnll, "foreign_tokens": fntok}
    return summarize(per, questions, hits, seed=seed)


def summarize(per: dict[str, dict], questions: Sequence[Question], hits, seed: int = 0) -> dict:
    """Summaries with intervals, paired differences vs the base with Holm-corrected p-values."""
    base = per["base"]
    summary, diffs = {}, {}
    for cond, r in per.items():
        summary[cond] = {
            "answer_nll": ratio_ci(r["nll"], r["tokens"], seed=seed),
            "exact_match": bootstrap_ci(r["em"], seed=seed),
            "contains": bootstrap_ci(r["contains"], seed=seed),
            "contamination": paired_ratio_diff(r["foreign_nll"], r["foreign_tokens"], base["foreign_nll"],
                                               base["foreign_tokens"], seed=seed)
            if len(r["foreign_nll"]) else None,
        }
        if cond == "base":
            continue
        diffs[cond] = {
            "answer_nll": paired_ratio_diff(r["nll"], r["tokens"], base["nll"], base["tokens"], seed=seed),
            "exact_match": paired_diff_ci(r["em"], base["em"], seed=seed),
            "contains": paired_diff_ci(r["contains"], base["contains"], seed=seed),
        }
        if summary[cond]["contamination"] is not None:
            diffs[cond]["contamination"] = summary[cond]["contamination"]
    if "adapter+rag" in per and "base+rag" in per:  # what the adapter adds on top of retrieval
        a, b = per["adapter+rag"], per["base+rag"]
        diffs["adapter+rag vs base+rag"] = {
            "answer_nll": paired_ratio_diff(a["nll"], a["tokens"], b["nll"], b["tokens"], seed=seed),
            "exact_match": paired_diff_ci(a["em"], b["em"], seed=seed),
            "contains": paired_diff_ci(a["contains"], b["contains"], seed=seed)}
    family = [(c, m) for c, d in diffs.items() for m in d]
    adj = holm([diffs[c][m].get("p", float("nan")) for c, m in family])
    for (c, m), p in zip(family, adj):
        diffs[c][m]["p_holm"] = p
    retrieved_own = [float(any(h.source == q.doc for h in hs)) for q, hs in zip(questions, hits)] if hits else []
    return {
        "n_questions": len(questions), "conditions": list(per),
        "summary": summary, "vs_base": diffs,
        "retrieval": {"own_game_in_top_k": bootstrap_ci(retrieved_own, seed=seed)} if retrieved_own else None,
        "items": [{"id": q.id, "doc": q.doc, "question": q.question, "answers": list(q.answers),
                   "sources": [h.id for h in hs] if hits else [],
                   **{c: {"pred": per[c]["preds"][i], "em": float(per[c]["em"][i]),
                          "nll_per_token": float(per[c]["nll"][i] / max(per[c]["tokens"][i], 1))} for c in per}}
                  for i, (q, hs) in enumerate(zip(questions, hits or [[]] * len(questions)))],
    }


def finding(res: dict) -> str:
    """One paragraph read from the numbers: which condition answers best, and at what cost."""
    s, d = res["summary"], res["vs_base"]
    best = min(s, key=lambda c: s[c]["answer_nll"]["mean"])
    parts = [f"On {res['n_questions']} questions about held-out games, {best} gives the lowest answer nll "
             f"({s[best]['answer_nll']['mean']:.3f} nats/token vs {s['base']['answer_nll']['mean']:.3f} for the base)."]
    for c, m in d.items():
        a, em = m["answer_nll"], m["exact_match"]
        what = c if " vs " in c else f"{c} vs base"
        parts.append(f"{what}: Δnll {a['mean']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] (Holm p="
                     f"{a.get('p_holm', float('nan')):.3g}: {_verdict(a, True)}), ΔEM {100 * em['mean']:+.1f} pts "
                     f"[{100 * em['lo']:+.1f}, {100 * em['hi']:+.1f}] (Holm p={em.get('p_holm', float('nan')):.3g})")
        if "contamination" in m:
            ct = m["contamination"]
            parts.append(f"  contamination {ct['mean']:+.3f} nats/token [{ct['lo']:+.3f}, {ct['hi']:+.3f}]")
    return "\n".join(parts)


def _verdict(x: dict, lower_better: bool) -> str:
    """'helps' / 'hurts' when the Holm-corrected p < 0.05, else 'makes no significant difference'."""
    if not x.get("p_holm", 1.0) < 0.05:
        return "makes no significant difference"
    return "helps" if (x["mean"] < 0) == lower_better else "hurts"

