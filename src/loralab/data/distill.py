"""Self-distillation: `loralab data distill IN --out DIR`.

    loralab data distill data/sport.qa --out data/sport.distilled
    loralab data distill data/sport.qa --out data/sport.distilled --model smollm2-135m --limit 50

The base model rewrites each response in its own words with the original as the
reference (SDFT: Yang et al. 2024, "Self-Distillation Bridges Distribution Gap in
Language Model Fine-Tuning"). Training on text the model already "speaks" moves its
weights less; the study measures whether that buys less forgetting.

A rewrite is kept only when
  * the checker agrees: every number of the original answer appears in the rewrite,
    and a short original answer (<= `short_answer_words` words) appears verbatim;
  * it passes the sanity filters: non-empty, length ratio to the original within
    [`min_ratio`, `max_ratio`] (no upper bound for short answers, which a full
    sentence may wrap), character-level check (letters, runs, vowels).
Otherwise the record goes to quarantine with the reason (nothing is replaced silently).
raw records have no response to rewrite and pass through unchanged.

Each kept record carries meta["distill"] = {"from_id", "loss_before", "loss_after"}:
the mean -log p(response | prompt) under the model of the original and of the rewrite
(the scorer's `loss_cond`, from the same log-prob engine), so the perplexity shift is on record per example.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator, Literal

from pydantic import Field

from ..config import StageConfig
from ..errors import UserError
from .checks import char_check
from .records import RECORDS_FILE, Record, to_messages
from .stage import Reject, run_stage, with_content

PROMPT = (
    "Here is a request and a reference answer. Rewrite the answer in your own words. "
    "Keep every fact and number of the reference. Reply with the rewritten answer only.\n\n"
    "Request:\n{prompt}\n\nReference answer:\n{answer}"
)
NUM = re.compile(r"-?\d+(?:[.,]\d+)?")


class DistillConfig(StageConfig):
    """Settings of `distill`; every field has a flag of the same name."""

    model: str = Field("smollm2-135m", description="Model that rewrites (the base model being adapted).")
    max_new_tokens: int = Field(96, ge=8, description="Longest rewrite, in tokens.")
    batch_size: int = Field(16, ge=1, description="Prompts generated together.")
    min_ratio: float = Field(0.3, gt=0, description="Shortest rewrite relative to the original (characters).")
    max_ratio: float = Field(3.0, gt=0, description="Longest rewrite relative to the original (characters).")
    short_answer_words: int = Field(5, ge=0, description="Originals this short must appear verbatim in the rewrite.")
    limit: int | None = Field(None, ge=1, description="Distill at most this many records (the rest pass through).")
    backend: Literal["auto", "static", "hf"] = Field(
        "auto", description="Generation: the static-cache decoder (auto, where the model allows it; about 1.4x "
        "transformers here) or transformers generate (hf). Batched bf16 answers differ between the two in some "
        "records (batch arithmetic), so a study's self-distilled data depends on it.")
    progress: bool = Field(True, description="Show a progress bar.")


def split_prompt(rec: Record) -> tuple[list[dict], str]:
    msgs = to_messages(rec)
    return msgs[:-1], msgs[-1]["content"]


def check_rewrite(original: str, rewrite: str, cfg: DistillConfig) -> str | None:
    """Why a rewrite is refused (None when it is kept)."""
    rw = rewrite.strip()
    if not rw:
        return "empty_rewrite"
    ratio = len(rw) / max(len(original.strip()), 1)
    short = len(original.split()) <= cfg.short_answer_words  # a sentence around a short answer is fine
    if ratio < cfg.min_ratio or (ratio > cfg.max_ratio and not short):
        return f"length_ratio: {ratio:.2f} outside [{cfg.min_ratio}, {cfg.max_ratio}]"
    missing = [n for n in NUM.findall(original) if n not in rw]
    if missing:
        return f"checker_numbers: {', '.join(missing[:5])} missing"
    if len(original.split()) <= cfg.short_answer_words and original.strip().lower().rstrip(".") not in rw.lower():
        return "checker_answer: short answer not in the rewrite"
    why = char_check(rw)
    return f"gibberish: {why}" if why else None


def _rewrite(rec: Record, text: str) -> Record:
    msgs = to_messages(rec)
    if rec.kind == "qa":
        fields = {"answer": text}
    elif rec.kind == "instruction":
        fields = {"output": text}
    else:
        msgs[-1] = {"role": "assistant", "content": text}
        fields = {"messages": msgs}
    return with_content(rec, fields)


def _loss(loaded, recs: list[Record]) -> list[float]:
    """Mean -log p(response | prompt) per record: the scorer's `loss_cond`, from the one log-prob engine."""
    from ..logprobs import encode_pair, token_logprobs
    from .render import chat_split

    tok = loaded.tokenizer
    pairs = []
    for r in recs:
        ren = chat_split(to_messages(r), tok)
        pairs.append(encode_pair(tok, ren.prompt, ren.response, bos=False))
    res = token_logprobs(loaded.model, pairs, pad_id=tok.pad_token_id or 0)
    return [-s.sum / max(s.n, 1) for s in res]


def _process(cfg: DistillConfig, loaded):
    from ..generate import generate

    def flush(buf: list[tuple[dict, Record]]) -> Iterator[tuple[dict, Record, object]]:
        prompts = []
        for _, rec in buf:
            ctx, ans = split_prompt(rec)
            shown = "\n".join(m["content"] for m in ctx if m["role"] != "system")
            prompts.append(PROMPT.format(prompt=shown, answer=ans))
        outs = generate(loaded, prompts, max_new_tokens=cfg.max_new_tokens, batch_size=cfg.batch_size,
                        backend=cfg.backend)
        verdicts, new = [], []
        for (loc, rec), text in zip(buf, outs):
            why = check_rewrite(split_prompt(rec)[1], text, cfg)
            verdicts.append(why)
            new.append(None if why else _rewrite(rec, text.strip()))
        kept_old = [rec for (_, rec), n in zip(buf, new) if n is not None]
        kept_new = [n for n in new if n is not None]
        before, after = _loss(loaded, kept_old), _loss(loaded, kept_new) if kept_new else []
        k = 0
        for (loc, rec), why, n, text in zip(buf, verdicts, new, outs):
            if why:
                yield loc, rec, Reject(why.split(":")[0], f"{why} | rewrite: {text[:160]}")
                continue
            meta = {**n.meta, "distill": {"from_id": rec.id, "loss_before": before[k], "loss_after": after[k]}}
            k += 1
            yield loc, rec, [n.model_copy(update={"meta": meta})]

    def process(items: Iterable[tuple[dict, Record]]):
        buf: list[tuple[dict, Record]] = []
        done = 0
        for loc, rec in items:
            if rec.kind == "raw" or (cfg.limit is not None and done >= cfg.limit):
                yield loc, rec, [rec]
                continue
            buf.append((loc, rec))
            done += 1
            if len(buf) == cfg.batch_size * 4:
                yield from flush(buf)
                buf = []
        if buf:
            yield from flush(buf)

    return process


def distill(in_dir: str | Path, out_dir: str | Path, cfg: DistillConfig | None = None, loaded=None) -> dict:
    """Rewrite responses with the model into `out_dir`; returns the data card."""
    from ..models import check_spec, load

    cfg = cfg or DistillConfig()
    if not (Path(in_dir) / RECORDS_FILE).exists():  # before the model loads
        raise UserError(f"{in_dir} is not a records folder (no {RECORDS_FILE})")
    if loaded is None:
        check_spec(cfg.model)
    loaded = loaded or load(cfg.model)
    return run_stage("distill", in_dir, out_dir, _process(cfg, loaded), config=cfg.model_dump(),
                     progress=cfg.progress)
