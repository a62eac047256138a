"""How far an adapter moves the model: in-domain loss and contamination of foreign domains.

In-domain gain   per-token loss (nats, token-weighted: Σ nll / Σ tokens) and perplexity of
                 the responses of held-out records (rendered in chat format), base vs
                 adapter; the difference and its interval are one statistic: the paired
                 cluster bootstrap over records of that token-weighted difference.
Contamination    for prompts of each domain (sport, medical, science, fiction, general,
                 built from packaged data; a user's own domain draws its prompts from its
                 held-out records), the base's greedy answer is the continuation;
                 at each of its positions we compare the full next-token distributions of
                 the base (adapter disabled, same weights) and the adapter:
                 per-token KL(base || adapter) and Jensen-Shannon divergence, in nats,
                 token-weighted, with a cluster bootstrap over prompts.
Style leak       share of words in greedy answers to foreign prompts that belong to the
                 adapter's domain lexicon (words far more frequent in that domain's text
                 than in the other domains'), adapter minus base.
"""

from __future__ import annotations

import contextlib
import functools
import math
import re
from collections import Counter
from pathlib import Path
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..data.records import Record, read_records
from ..data.render import Rendered, render
from ..generate import chat_inputs, generate_sorted
from ..logprobs import encode_pair, token_divergence, token_logprobs
from . import sources as S
from .stats import paired_diff_ci, paired_ratio_diff, ratio_ci

DOMAINS = ("sport", "medical", "science", "fiction", "general")
# benchmark tasks drawn from a domain's own material: for an adapter of that domain they
# measure gain, not forgetting (the "general" prompts are ARC-Easy questions)
DOMAIN_TASKS = {"medical": ("medmcqa", "medqa"), "science": ("sciq", "openbookqa"),
                "general": ("arc_easy", "arc_challenge")}
SPORT_WORDS = ("touchdown", "field goal", "quarterback")
STOP = set("""a about above after again against all also am an and any are as at be because been before being
below between both but by can could did do does doing down during each few for from further had has have having he
her here hers him his how i if in into is it its itself just me more most my no nor not now of off on once only or
other our out over own same she should so some such than that the their them then there these they this those
through to too under until up very was we were what when where which while who whom why will with would you your
one two three first second also many much may might must new used use like get got make made""".split())


# ------------------------------------------------------------------ prompt sets

def _clip(text: str, chars: int) -> str:
    """The first sentences of `text` within `chars` characters."""
    if len(text) <= chars:
        return text
    cut = text[:chars]
    return cut[: cut.rfind(". ") + 1] if ". " in cut else cut


@functools.cache
def domain_texts(domain: str) -> tuple[tuple[str, str], ...]:
    """(prompt, reference text) pairs of a packaged domain, in a fixed order."""
    if domain == "sport":
        seen, out = set(), []
        for d in S.oe_docs("drop", "bpb_5shot"):
            p = d["passage"]
            if p not in seen and any(w in p.lower() for w in SPORT_WORDS):
                seen.add(p)
                out.append((f"{_clip(p, 500)}\n\nQuestion: {d['question']}", p))
        return tuple(out)
    if domain == "medical":
        return tuple((d["question"], f"{d['question']} {d['choices'][d['gold']]}")
                     for d in S.oe_docs("medmcqa", "rc_5shot")[:2000])
    if domain == "science":
        return tuple((r["question"], f"{r['support']} {r['question']} {r['correct_answer']}")
                     for r in S.hf_rows("sciq", "none", "validation"))
    if domain == "fiction":
        return tuple((f"Continue the story:\n{_clip(d['query'][-500:], 500)}", d["query"])
                     for d in S.oe_docs("lambada", "bpb_0shot")[:2000])
    if domain == "general":
        return tuple((r["question"], f"{r['question']} {' '.join(r['choices']['text'])}")
                     for r in S.hf_rows("ai2_arc", "ARC-Easy", "validation"))
    raise KeyError(f"unknown domain {domain!r}; packaged: {', '.join(DOMAINS)}")


def record_prompt(rec: Record, chars: int = 500) -> str:
    """A prompt made from one record of a user's domain: its user turn, else its text to continue."""
    from ..data.records import to_messages

    msgs = to_messages(rec)
    users = [m["content"] for m in msgs if m["role"] == "user"]
    if users:
        return _clip(users[-1], chars)
    text = msgs[-1]["content"]
    return f"Continue the text:\n{_clip(text, min(chars, max(len(text) // 2, 40)))}"


def custom_texts(folder: str) -> tuple[tuple[str, str], ...]:
    """(prompt, reference text) pairs of a user's domain, from a (held-out) records folder."""
    from ..data.records import to_messages

    return tuple((record_prompt(r), " ".join(m["content"] for m in to_messages(r))) for r in read_records(folder))


def domain_prompts(domain: str, n: int, seed: int = 0, folder: str | None = None) -> list[str]:
    """A seeded fixed subset of `n` prompts of a domain (packaged, or a user's from `folder`)."""
    items = custom_texts(folder) if folder else domain_texts(domain)
    keep = np.sort(np.random.default_rng(seed).permutation(len(items))[: min(n, len(items))])
    return [items[i][0] for i in keep]


# --------------------------------------------------------------------- lexicon

def words(text: str) -> list[str]:
    return re.findall(r"[a-z]{3,}", text.lower())


def build_lexicon(domain_docs: Sequence[str], reference_docs: Sequence[str], size: int = 300,
                  min_count: int = 3) -> frozenset[str]:
    """Words most over-represented in `domain_docs` vs `reference_docs` (smoothed log-odds)."""
    dc = Counter(w for t in domain_docs for w in words(t) if w not in STOP)
    rc = Counter(w for t in reference_docs for w in words(t) if w not in STOP)
    nd, nr = sum(dc.values()) + 1, sum(rc.values()) + 1
    score = {w: math.log((c + 0.5) / nd) - math.log((rc.get(w, 0) + 0.5) / nr)
             for w, c in dc.items() if c >= min_count}
    return frozenset(sorted(score, key=lambda w: -score[w])[:size])


@functools.cache
def packaged_lexicon(domain: str, docs: int = 400) -> frozenset[str]:
    ref = [t for d in DOMAINS if d != domain for _, t in domain_texts(d)[:docs]]
    return build_lexicon([t for _, t in domain_texts(domain)[:docs]], ref)


def lexicon_for(domain: str | None, records: Sequence[Record] = ()) -> frozenset[str] | None:
    """The adapter's domain lexicon: packaged domain, else built from its records."""
    if domain in DOMAINS:
        return packaged_lexicon(domain)
    if records:
        from ..data.records import to_messages

        docs = [" ".join(m["content"] for m in to_messages(r)) for r in records]
        ref = [t for d in DOMAINS for _, t in domain_texts(d)[:200]]
        return build_lexicon(docs, ref)
    return None


def lexicon_rate(texts: Sequence[str], lexicon: frozenset[str]) -> np.ndarray:
    """(texts,) share of each text's content words found in `lexicon`."""
    out = []
    for t in texts:
        ws = [w for w in words(t) if w not in STOP]
        out.append(sum(w in lexicon for w in ws) / len(ws) if ws else 0.0)
    return np.array(out)


# ----------------------------------------------------------- in-domain loss

def is_held_out_folder(folder: str | Path) -> bool:
    """A records folder written as held-out documents (its data card says so)."""
    import json

    p = Path(folder) / "data_card.json"
    try:
        card = json.loads(p.read_text(encoding="utf-8")) if p.exists() else {}
    except (OSError, ValueError):
        return False
    return bool((card.get("split") or {}).get("held_out"))


def _split_of(card: dict | None) -> tuple[float, int]:
    cfg = (card or {}).get("config") or {}
    return float(cfg.get("eval_frac", 0.1)), int(cfg.get("seed", 0))


def eval_records(card: dict | None, eval_data: str | None, limit: int | None, seed: int = 0,
                 mode: str = "all") -> list[Record]:
    """Held-out records: `eval_data`, else the adapter's own eval split rebuilt from its card.

    mode "auto": a folder that is not a held-out folder is used only through its eval split
    (the adapter's eval_frac and seed, as training split it); "all": every record of it.
    """
    from ..data.split import split

    if eval_data:
        recs = list(read_records(eval_data))
        if mode == "auto" and not is_held_out_folder(eval_data):
            recs = split(recs, *_split_of(card))[1]
    elif card and (card.get("data") or {}).get("path"):
        try:
            recs = split(read_records(card["data"]["path"]), *_split_of(card))[1]
        except FileNotFoundError:
            return []
    else:
        return []
    if limit is not None and len(recs) > limit:
        keep = np.sort(np.random.default_rng(seed).permutation(len(recs))[:limit])
        recs = [recs[i] for i in keep]
    return recs


def training_overlap(card: dict | None, records: Sequence[Record]) -> dict | None:
    """How many of `records` are training examples of the adapter (by record id), from its card's
    data path and split; None when the card names no readable training data."""
    from ..adapters import data_digest
    from ..data.split import split

    data = (card or {}).get("data") or {}
    path = data.get("path")
    if not path or not Path(path).exists():
        return None
    train_ids = {r.id for r in split(read_records(path), *_split_of(card))[0]}
    hit = sum(r.id in train_ids for r in records)
    return {"records": int(hit), "of": len(records), "training_data": str(path),
            "digest_matches": data.get("digest") is None or data_digest(path) == data.get("digest")}


def _rendered(rec: Record, tokenizer, trigger: str | None) -> Rendered:
    if trigger:
        from ..packing import render_with_trigger

        return render_with_trigger(rec, tokenizer, trigger)
    return render(rec, "chat", tokenizer)


def record_losses(loaded, records: Sequence[Record], *, trigger: str | None = None,
                  batch_tokens: int | None = None, progress: bool = True) -> dict:
    """Per-record response nll sums (nats), token counts and mean losses, for one model state."""
    tok = loaded.tokenizer
    enc = []
    for r in records:
        rd = _rendered(r, tok, trigger)
        enc.append(encode_pair(tok, rd.prompt, rd.response, bos=not rd.prompt))  # raw: BOS as context
    sc = token_logprobs(loaded.model, enc, batch_tokens=batch_tokens, pad_id=tok.pad_token_id or 0,
                        progress="in-domain loss" if progress else False)
    return {"ids": [r.id for r in records], "loss": np.array([-s.mean for s in sc]),
            "nll": np.array([-float(s.sum) for s in sc]), "tokens": np.array([s.n for s in sc]),
            "nll_sum": float(-sum(s.sum for s in sc))}


def loss_summary(cur: dict, base: dict | None, seed: int = 0, resamples: int = 1000) -> dict:
    """Token-weighted loss with its cluster-bootstrap interval; vs `base`, the paired difference
    adapter − base of the same statistic (negative = the adapter fits the held-out text better)."""
    n_tok = int(cur["tokens"].sum())
    ci = ratio_ci(cur["nll"], cur["tokens"], seed=seed, resamples=resamples)
    out = {"records": int(cur["nll"].size), "tokens": n_tok, "loss": ci["mean"], "ppl": math.exp(min(ci["mean"], 50)),
           "loss_ci": ci}
    if base is not None:
        if list(base["ids"]) != list(cur["ids"]):
            raise ValueError("in-domain losses of base and adapter are on different records")
        out["delta_vs_base"] = paired_ratio_diff(cur["nll"], cur["tokens"], base["nll"], base["tokens"],
                                                 seed=seed, resamples=resamples)
    return out


def loss_items(cur: dict) -> dict:
    """The per-record vectors behind a loss summary (for paired comparisons between adapters)."""
    return {"ids": list(cur["ids"]), "nll": [float(x) for x in cur["nll"]], "tokens": [int(x) for x in cur["tokens"]]}


# --------------------------------------------------------------- contamination

@dataclass
class PromptSet:
    domain: str
    prompts: list[str]
    answers: list[str]  # base greedy answers (decoded)
    answer_ids: list[list[int]]  # base greedy answer ids (the continuation positions)


def greedy(loaded, prompts: Sequence[str], max_new_tokens: int, batch: int = 32) -> tuple[list[list[int]], list[str]]:
    """Greedy answer ids and texts, in prompt order. Prompts are generated shortest first,
    `batch` at a time, so a batch pads to prompts of its own length (a fixed, seed-free layout:
    the base and every adapter answer the same prompts in the same batches)."""
    tok = loaded.tokenizer
    ids = generate_sorted(loaded, chat_inputs(tok, list(prompts)), batch_size=batch, max_new_tokens=max_new_tokens)
    return ids, [tok.decode(x, skip_special_tokens=True).strip() for x in ids]


def base_prompt_sets(loaded, n: int, max_new_tokens: int, seed: int = 0,
                     domains: Sequence[str] = DOMAINS, folders: dict[str, str] | None = None) -> list[PromptSet]:
    """Prompts of every domain with the base model's greedy answers (one batched generation).

    `folders` maps a user's domain (not packaged) to the records folder its prompts come from."""
    folders = folders or {}
    prompts = {d: domain_prompts(d, n, seed, folders.get(d)) for d in domains}
    ids, text = greedy(loaded, [p for d in domains for p in prompts[d]], max_new_tokens)
    out, off = [], 0
    for d in domains:
        k = len(prompts[d])
        out.append(PromptSet(d, prompts[d], text[off: off + k], ids[off: off + k]))
        off += k
    return out


def _peft(model):
    from ..adapters import peft_model

    pm = peft_model(model)
    if pm is None:
        raise ValueError("contamination needs a PEFT-wrapped model (apply an adapter first)")
    return pm


def prompt_ids(prompts: Sequence[str]) -> list[str]:
    """A prompt's id where prompts are items (KL pairing across runs): a digest of its text."""
    import hashlib

    return [hashlib.sha1(p.encode("utf-8")).hexdigest()[:16] for p in prompts]


def divergence(loaded, ps: PromptSet, *, trigger: str | None = None, batch_tokens: int | None = None,
               progress: bool = True, seed: int = 0, base=None, base_hidden: dict | None = None) -> dict:
    """Mean per-token KL(base || adapter) and JS over the base answers' positions.

    `loaded` is the base with an adapter applied (the base is the adapter switched off), or a
    whole tuned model together with `base` (a models.Loaded of the base, same tokenizer).
    `base_hidden`: a dict kept across the adapters of one base (see `token_divergence`'s
    p_hidden); the base side then runs once per prompt set, not once per adapter."""
    tok = loaded.tokenizer
    prompts = [trigger + p for p in ps.prompts] if trigger else ps.prompts
    eos = [tok.eos_token_id] if tok.eos_token_id is not None else []
    pairs = [(ctx, ans + eos) for ctx, ans in zip(chat_inputs(tok, prompts), ps.answer_ids)]
    if base is not None:
        p_model, q_model, p_ctx = base.model, loaded.model, None
    else:
        pm = _peft(loaded.model)
        p_model, q_model, p_ctx = pm, pm, pm.disable_adapter
    div = token_divergence(p_model, q_model, pairs, p_context=p_ctx, batch_tokens=batch_tokens, p_hidden=base_hidden,
                           pad_id=tok.pad_token_id or 0, progress=f"KL {ps.domain}" if progress else False)
    n = [d.kl.size for d in div]
    kl = ratio_ci([d.kl.sum() for d in div], n, seed=seed)  # token-weighted, prompts resampled whole
    js = ratio_ci([d.js.sum() for d in div], n, seed=seed)
    return {"kl": kl["mean"], "js": js["mean"], "tokens": int(sum(n)), "prompts": len(div),
            "kl_ci": kl, "js_ci": js, "items": {"ids": prompt_ids(ps.prompts), "kl": [float(d.kl.sum()) for d in div], "tokens": n}}


def style_leak(loaded, sets: Sequence[PromptSet], lexicon: frozenset[str], max_new_tokens: int,
               seed: int = 0) -> dict[str, dict]:
    """Per domain: domain-lexicon share of adapter greedy answers minus the base's, same prompts."""
    _, answers = greedy(loaded, [p for ps in sets for p in ps.prompts], max_new_tokens)
    out, off = {}, 0
    for ps in sets:
        mine = answers[off: off + len(ps.prompts)]
        off += len(ps.prompts)
        a, b = lexicon_rate(mine, lexicon), lexicon_rate(ps.answers, lexicon)
        out[ps.domain] = {"adapter_rate": float(a.mean()), "base_rate": float(b.mean()),
                          "leak": paired_diff_ci(a, b, seed=seed), "sample": mine[:2]}
    return out


@contextlib.contextmanager
def active(model, name: str):
    """Make adapter `name` the active one for the duration."""
    pm = _peft(model)
    prev = pm.active_adapter
    pm.set_adapter(name)
    try:
        yield
    finally:
        pm.set_adapter(prev)
