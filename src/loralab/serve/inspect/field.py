"""The token probability field of a base model and its adapters: pure functions.

Every number comes from the log-prob engine (`loralab.logprobs.next_token_logprobs`): one
forward per side (the base, a mix) gives the full fp32 next-token distribution at every
continuation position, cached per (prompt, continuation, mix); a token's log-prob, the top-k,
any candidate's log-prob, KL(base ‖ mix) and JS (`logprobs.kl_js`) are all read from those
same rows, so one token has one value everywhere on the page. The model runs in fp32 (the
inspector's own copy; `Inspector.precision` says so in every answer). Adapters
are PEFT LoRA adapters loaded side by side on one copy of the base (`adapters.apply_adapters`);
a *mix* activates several of them at once and sets each one's strength with PEFT's own
`LoraLayer.set_scale` (scaling = strength · alpha / r), so the LoRA update itself is computed
by PEFT / `fastlora` as everywhere else:

    W x + Σ_i strength_i · (alpha_i / r_i) · B_i A_i x

An adapter at strength 0 is left out of the mix, so a mix whose other adapters are at 0 is
that single adapter exactly, and all at 0 is the base; trained token rows (a trigger
token's embedding) are not scaled.

    ins = Inspector.load(models.load("tiny-random"), {"sport": "runs/sport/adapter"})
    f = token_field(ins, "Who won?", "The Bears won.", {"sport": 1.0})
    d = position_detail(ins, "Who won?", "The Bears won.", {"sport": 1.0}, position=1)
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np
import torch

from ...adapters import AdapterError, apply_adapters, check, peft_model, resolve_folder
from ...errors import UserError
from ...generate import chat_inputs, generate_ids
from ...logprobs import encode_pair, kl_js, next_token_logprobs, token_divergence, token_logprobs

MAX_PROMPT_CHARS = 20_000  # a longer prompt is refused (the page is for reading token by token)
MAX_CONTINUATION_TOKENS = 512
MAX_STRENGTH = 2.0
MAX_TOP_K = 50
CACHE_BYTES = 768 << 20  # distributions kept per (prompt, continuation, side): ~32 answers of 100 tokens


class PromptTooLong(UserError):
    """A prompt over MAX_PROMPT_CHARS (the API answers 413)."""


@dataclass
class Inspector:
    """One copy of the base with every adapter loaded under its name; a lock serialises use."""

    loaded: object  # models.Loaded, its model PEFT-wrapped once an adapter is loaded
    base: object  # the Loaded given (fingerprint and tokenizer of the base)
    paths: dict[str, str] = field(default_factory=dict)  # adapter name -> folder
    lock: threading.RLock = field(default_factory=threading.RLock)
    cache: OrderedDict = field(default_factory=OrderedDict)  # (ctx, cont, side) -> (n, V) fp32 log-probs
    cache_bytes: int = 0
    passes: int = 0  # model forwards run (each side of each new (prompt, continuation) once)
    generation: int = 0  # bumps at every field request: a prefetch for an older one stops

    @classmethod
    def load(cls, base, adapters: Mapping[str, str | Path] | None = None, *, share: bool = False,
             fp32: bool = True) -> "Inspector":
        """An inspector over `base` (a models.Loaded) with `adapters` {name: folder} loaded.

        Loading adapters wraps the model's layers in place, so the base is copied first
        unless `share` is True (then the caller gives up its plain model). With `fp32` (the
        default) the inspector's model runs in float32 whatever the base's dtype: its numbers
        are read to 3-4 decimals, which bf16 (8 bits of mantissa) cannot carry.
        """
        own = base if share else copy.copy(base)
        if not share:
            own.model = copy.deepcopy(base.model)
            for m in own.model.modules():  # a forward swapped in for the duration of a call (fastlora) stays there
                m.__dict__.pop("forward", None)
                m.__dict__.pop("_loralab_bank", None)
        if fp32:
            own.model = own.model.float()
        ins = cls(loaded=own, base=base)
        for name, path in (adapters or {}).items():
            ins.add_adapter(name, path)
        return ins

    @property
    def tokenizer(self):
        return self.loaded.tokenizer

    @property
    def precision(self) -> dict:
        p = next(self.loaded.model.parameters())
        return {"dtype": str(p.dtype).removeprefix("torch."), "device": str(p.device),
                "note": "log-probs from an fp32 log-softmax of the model's logits"}

    def distribution(self, ctx: list[int], cont: list[int], weights: Mapping[str, float]) -> torch.Tensor:
        """(len(cont), V) fp32 log-probs of the base ({} or all strengths 0) or of the mix, cached."""
        side = tuple(sorted((n, w) for n, w in check_weights(self, weights).items() if w != 0.0))
        key = (tuple(ctx), tuple(cont), side)
        with self.lock:
            hit = self.cache.get(key)
            if hit is not None:
                self.cache.move_to_end(key)
                return hit
            with (mixed(self, dict(side)) if side else base_context(self)):
                lp = next_token_logprobs(self.loaded.model, ctx, cont, pad_id=_pad(self))
            self.passes += 1
            self.cache[key] = lp
            self.cache_bytes += lp.numel() * lp.element_size()
            while self.cache_bytes > CACHE_BYTES and len(self.cache) > 1:
                _, old = self.cache.popitem(last=False)
                self.cache_bytes -= old.numel() * old.element_size()
            return lp

    @property
    def names(self) -> list[str]:
        return list(self.paths)

    def add_adapter(self, name: str, path: str | Path) -> str:
        """Load the adapter folder (or run folder) `path` as `name`; every mismatch is reported."""
        folder = resolve_folder(path)
        name = adapter_key(name)
        with self.lock:
            if name in self.paths:
                if Path(self.paths[name]) == folder:
                    return name
                raise UserError(f"an adapter named {name!r} is already loaded from {self.paths[name]}")
            pm = peft_model(self.loaded.model)
            if pm is None:
                self.loaded = apply_adapters(self.loaded, [folder], [name])
            else:
                problems, tok = check(dataclasses.replace(self.loaded, model=_skeleton(pm)), [folder])
                if tok is not None and tok.get_vocab() != self.loaded.tokenizer.get_vocab():
                    problems.append(f"{folder}: adds tokens; load it first or alone")
                if problems:
                    raise AdapterError("cannot apply adapters:\n  " + "\n  ".join(problems))
                pm.load_adapter(str(folder), adapter_name=name)
                pm.eval()
            self.paths[name] = str(folder)
        return name


def adapter_key(name: str) -> str:
    """A name PEFT can hold (a module key): letters, digits, '_' and '-', never a Module attribute."""
    key = re.sub(r"[^A-Za-z0-9_-]", "_", str(name or "")).strip("_")
    if not key:
        raise UserError(f"adapter name {name!r}: use letters, digits, '-' and '_'")
    if hasattr(torch.nn.Module, key) or key in ("base_model", "model", "default", "base", "mix", "bias"):
        key += "_adapter"
    return key


def _skeleton(pm):
    """The base's architecture on the meta device (no weights): what an adapter's tensors are
    checked against once the real base is PEFT-wrapped (its linear layers then are LoRA layers)."""
    from transformers import AutoModelForCausalLM

    base = pm.get_base_model()
    with torch.device("meta"):
        skel = AutoModelForCausalLM.from_config(base.config)
    rows = base.get_input_embeddings().weight.shape[0]
    if skel.get_input_embeddings().weight.shape[0] != rows:
        skel.resize_token_embeddings(rows)
    return skel


# ------------------------------------------------------------------ mixing

def check_weights(ins: Inspector, weights: Mapping[str, float]) -> dict[str, float]:
    """{adapter: strength} validated: known names, 0 <= strength <= 2."""
    out = {}
    for name, w in weights.items():
        if name not in ins.paths:
            known = ", ".join(ins.names) or "none loaded"
            raise UserError(f"unknown adapter {name!r} (known: {known})")
        if not isinstance(w, (int, float)) or not math.isfinite(w) or not 0.0 <= w <= MAX_STRENGTH:
            raise UserError(f"strength of {name!r} must be between 0 and {MAX_STRENGTH:g}, got {w!r}")
        out[name] = float(w)
    return out


def _lora_layers(model) -> Iterator:
    for m in model.modules():
        if hasattr(m, "set_scale") and hasattr(m, "lora_A"):
            yield m


@contextlib.contextmanager
def mixed(ins: Inspector, weights: Mapping[str, float]):
    """Within the block the model is the base plus Σ strength_i · adapter_i (PEFT scaling).

    No weights (or no adapters loaded): the base with adapters disabled.
    """
    weights = {n: w for n, w in check_weights(ins, weights).items() if w != 0.0}  # 0: not in the mix
    pm = peft_model(ins.loaded.model)
    if pm is None or not weights:
        with (pm.disable_adapter() if pm is not None else contextlib.nullcontext()):
            yield
        return
    names = list(weights)
    before = list(pm.base_model.active_adapters)
    layers = list(_lora_layers(pm))
    pm.base_model.set_adapter(names)  # several active adapters: PEFT sums their updates
    for m in layers:
        for n in names:
            m.set_scale(n, weights[n])
    try:
        yield
    finally:
        for m in layers:
            for n in names:
                m.set_scale(n, 1.0)
        pm.base_model.set_adapter(before if len(before) > 1 else before[0])
        pm.base_model.requires_grad_(False)


def base_context(ins: Inspector):
    pm = peft_model(ins.loaded.model)
    return pm.disable_adapter() if pm is not None else contextlib.nullcontext()


@contextlib.contextmanager
def logit_bias(ins: Inspector, bias: Mapping[int, float]):
    """Within the block `bias[token]` is added to that token's logit (the vocabulary head's output)."""
    if not bias:
        yield
        return
    head = ins.loaded.model.get_output_embeddings()
    ids = torch.tensor(list(bias), dtype=torch.long)
    vals = torch.tensor([float(v) for v in bias.values()])

    def hook(_mod, _inp, out):  # out (..., V)
        return out.index_add(-1, ids.to(out.device), vals.to(out.device, out.dtype).expand(*out.shape[:-1], -1))

    handle = head.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


# ------------------------------------------------------------------ encoding

def check_prompt(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise UserError("the prompt is empty")
    if len(prompt) > max_chars:
        raise PromptTooLong(f"the prompt has {len(prompt):,} characters; the inspector takes at most {max_chars:,}")
    return prompt


def prompt_ids(ins: Inspector, prompt: str, chat: bool) -> list[int]:
    """Context token ids: the chat template ready for the assistant turn, or BOS + raw text."""
    check_prompt(prompt)
    if chat:
        return chat_inputs(ins.tokenizer, [prompt])[0]
    ctx, cont = encode_pair(ins.tokenizer, prompt, "", bos=True)
    return ctx + cont


def encode(ins: Inspector, prompt: str, continuation: str, chat: bool) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) as the engine scores them."""
    check_prompt(prompt)
    if not continuation:
        raise UserError("the continuation is empty: paste a text or generate one")
    if chat:
        ctx = chat_inputs(ins.tokenizer, [prompt])[0]
        cont = ins.tokenizer.encode(continuation, add_special_tokens=False)
    else:
        ctx, cont = encode_pair(ins.tokenizer, prompt, continuation, bos=True)
    if len(cont) > MAX_CONTINUATION_TOKENS:
        raise UserError(f"the continuation has {len(cont)} tokens; the inspector takes at most "
                        f"{MAX_CONTINUATION_TOKENS}")
    if not cont:
        raise UserError("the continuation encodes to no tokens")
    return ctx, cont


def token_texts(tok, ids: Sequence[int]) -> list[str]:
    return [tok.decode([int(i)]) for i in ids]


def _pad(ins: Inspector) -> int:
    return ins.tokenizer.pad_token_id or 0


# ------------------------------------------------------------------ the field

def token_field(ins: Inspector, prompt: str, continuation: str, weights: Mapping[str, float], *,
                chat: bool = True, worst: int = 8) -> dict:
    """Per continuation token: log p under base and under the mix, their difference, surprisal
    (nats, −log p), KL(base ‖ mix) and JS at the position predicting it; the `worst` positions
    by KL first in `disagree`. Two forwards at most (base and mix), each cached."""
    ctx, cont = encode(ins, prompt, continuation, chat)
    weights = check_weights(ins, weights)
    base = ins.distribution(ctx, cont, {})
    mix = ins.distribution(ctx, cont, weights)
    idx = torch.arange(len(cont))
    tgt = torch.tensor(cont)
    base_lp = base[idx, tgt].double().numpy()
    ad_lp = mix[idx, tgt].double().numpy()
    kl_t, js_t = kl_js(base, mix)
    kl, js = kl_t.double().numpy(), js_t.double().numpy()
    order = np.argsort(-kl, kind="stable")[:worst]
    return {
        "context_tokens": len(ctx),
        "ids": [int(i) for i in cont],
        "tokens": token_texts(ins.tokenizer, cont),
        "base_logprob": base_lp.tolist(),
        "adapter_logprob": ad_lp.tolist(),
        "logprob_diff": (ad_lp - base_lp).tolist(),
        "base_surprisal": (-base_lp).tolist(),
        "surprisal": (-ad_lp).tolist(),
        "kl": kl.tolist(),
        "js": js.tolist(),
        "disagree": [int(i) for i in order],
        "totals": {"base_nll": float(-base_lp.sum()), "adapter_nll": float(-ad_lp.sum()),
                   "kl_mean": float(kl.mean()), "kl_max": float(kl.max())},
        "weights": weights,
        "precision": ins.precision,
    }


MAX_DATASET_RECORDS = 500
RAW_PROMPT_WORDS = 12  # a raw text's first words stand for its prompt in the dataset view


def record_pair(rec) -> tuple[str, str, bool] | None:
    """(prompt, continuation, chat) of a record as the token view shows it: the last user turn
    and the answer (chat), or a raw text's first words and the rest; None without a response."""
    from ...data.records import to_messages

    if rec.kind == "raw":
        words = rec.text.split(" ")
        if len(words) <= RAW_PROMPT_WORDS:
            return None
        return " ".join(words[:RAW_PROMPT_WORDS]), " " + " ".join(words[RAW_PROMPT_WORDS:]), False
    msgs = to_messages(rec)
    users = [m for m in msgs[:-1] if m["role"] == "user"]
    if msgs[-1]["role"] != "assistant" or not users or not msgs[-1]["content"].strip():
        return None
    return users[-1]["content"], msgs[-1]["content"], True


def dataset_view(ins: Inspector, records: Sequence, weights: Mapping[str, float], *, limit: int = 100) -> dict:
    """Each record scored under the base and the mix (its answer given its prompt) and ranked by how
    much they disagree (mean KL(base ‖ mix) per answer token, as LMdiff ranks texts), with the
    per-token log-prob change; every row carries what the token view needs (prompt, continuation,
    chat). Records without an answer, or longer than the token view takes, are counted, not ranked."""
    if not isinstance(limit, int) or not 1 <= limit <= MAX_DATASET_RECORDS:
        raise UserError(f"limit must be between 1 and {MAX_DATASET_RECORDS}")
    weights = check_weights(ins, weights)
    if not any(w != 0.0 for w in weights.values()):
        raise UserError("choose an adapter with a strength above 0: the dataset view compares it with the base")
    rows, pairs, skipped = [], [], {"no_answer": 0, "too_long": 0}
    for i, rec in enumerate(records[:limit]):
        pc = record_pair(rec)
        if pc is None:
            skipped["no_answer"] += 1
            continue
        prompt, cont, chat = pc
        try:
            ctx, ids = encode(ins, prompt, cont, chat)
        except UserError:
            skipped["too_long"] += 1
            continue
        rows.append({"index": i, "id": rec.id, "prompt": prompt, "continuation": cont, "chat": chat,
                     "tokens": len(ids)})
        pairs.append((ctx, ids))
    if pairs:
        with ins.lock:
            with base_context(ins):
                base = token_logprobs(ins.loaded.model, pairs, pad_id=_pad(ins))
            with mixed(ins, weights):
                mix = token_logprobs(ins.loaded.model, pairs, pad_id=_pad(ins))
            div = token_divergence(ins.loaded.model, ins.loaded.model, pairs, p_context=lambda: base_context(ins),
                                   q_context=lambda: mixed(ins, weights), pad_id=_pad(ins))
        for r, b, m, d in zip(rows, base, mix, div):
            r["mean_kl"] = float(np.mean(d.kl, dtype=np.float64))
            r["max_kl"] = float(np.max(d.kl))
            r["delta_logprob"] = float(np.mean(m.logprobs.astype(np.float64) - b.logprobs.astype(np.float64)))
    rows.sort(key=lambda r: -r["mean_kl"])
    return {"rows": rows, "read": min(len(records), limit), "ranked": len(rows), "skipped": skipped,
            "weights": weights, "precision": ins.precision}


def prefetch_sides(ins: Inspector, prompt: str, continuation: str, weights: Mapping[str, float], *,
                   chat: bool = True) -> threading.Thread | None:
    """Compute, in the background, each adapter alone at its strength for this continuation: the
    sides a click on a token shows besides the base and the mix (already computed by the field).
    One forward at a time under the inspector's lock; stops when a newer field request arrives."""
    weights = {n: w for n, w in check_weights(ins, weights).items() if w != 0.0}
    if len(weights) < 2:
        return None  # one adapter alone is the mix itself
    ctx, cont = encode(ins, prompt, continuation, chat)
    with ins.lock:
        ins.generation += 1
        gen = ins.generation

    def run():
        for n, w in weights.items():
            if ins.generation != gen:
                return
            ins.distribution(ctx, cont, {n: w})

    t = threading.Thread(target=run, name="inspector-prefetch", daemon=True)
    t.start()
    return t


def _bias_vector(ins: Inspector, bias: Mapping[int, float], V: int) -> torch.Tensor:
    vec = torch.zeros(V)
    for t, v in bias.items():
        vec[int(t)] += float(v)
    return vec


def position_detail(ins: Inspector, prompt: str, continuation: str, weights: Mapping[str, float], position: int,
                    *, chat: bool = True, k: int = 10, bias: Mapping[int, float] | None = None) -> dict:
    """Top-k next-token distributions at continuation token `position` under the base, each
    adapter alone at its strength and (with several) the mix, and (with `bias`) the mix under
    the corrections' logit bias; then every side's log-prob of the union of those tokens, and
    the tokens ordered by how much the sides disagree (largest probability spread first).
    Every number is read from the side's one cached distribution."""
    ctx, cont = encode(ins, prompt, continuation, chat)
    if not isinstance(position, int) or not 0 <= position < len(cont):
        raise UserError(f"position must be between 0 and {len(cont) - 1}, got {position!r}")
    if not isinstance(k, int) or not 1 <= k <= MAX_TOP_K:
        raise UserError(f"k must be between 1 and {MAX_TOP_K}, got {k!r}")
    weights = check_weights(ins, weights)
    sides: list[tuple[str, torch.Tensor]] = [("base", ins.distribution(ctx, cont, {})[position])]
    for n, w in weights.items():
        sides.append((n, ins.distribution(ctx, cont, {n: w})[position]))
    if len(weights) > 1:
        sides.append(("mix", ins.distribution(ctx, cont, weights)[position]))
    if bias:
        row = ins.distribution(ctx, cont, weights)[position]
        sides.append(("bias", torch.log_softmax(row + _bias_vector(ins, bias, row.shape[0]), -1)))
    out, union = [], []
    for name, row in sides:
        v, i = row.topk(k)
        ids = [int(x) for x in i]
        out.append({"name": name, "top_ids": ids, "top_logprobs": [float(x) for x in v]})
        union += [t for t in ids if t not in union]
    if cont[position] not in union:
        union.append(cont[position])
    cand = torch.tensor(union)
    for side, (_, row) in zip(out, sides):
        side["logprobs"] = [float(x) for x in row[cand]]
    spread = [max(math.exp(s["logprobs"][j]) for s in out) - min(math.exp(s["logprobs"][j]) for s in out)
              for j in range(len(union))]
    order = sorted(range(len(union)), key=lambda j: -spread[j])
    for s in out:
        s["top_tokens"] = token_texts(ins.tokenizer, s["top_ids"])
    return {
        "position": position, "actual_id": int(cont[position]),
        "actual": ins.tokenizer.decode([int(cont[position])]),
        "prefix_text": ins.tokenizer.decode(cont[:position]),
        "rest_text": ins.tokenizer.decode(cont[position:]),
        "sides": out,
        "candidates": [int(c) for c in union],
        "candidate_tokens": token_texts(ins.tokenizer, union),
        "disagree": [{"id": int(union[j]), "token": ins.tokenizer.decode([int(union[j])]),
                      "spread": spread[j]} for j in order[:k]],
        "precision": ins.precision,
    }


@contextlib.contextmanager
def _stack(*cms):
    with contextlib.ExitStack() as st:
        for cm in cms:
            st.enter_context(cm)
        yield


# ------------------------------------------------------------------ generation

def side_by_side(ins: Inspector, prompt: str, weights: Mapping[str, float], *, chat: bool = True,
                 seed: int = 0, max_new_tokens: int = 48, temperature: float = 0.0,
                 bias: Mapping[int, float] | None = None) -> dict:
    """Generations of the base and of the mix from the same seed (and of the mix under the
    corrections' logit bias when `bias` is given), each as text and token ids."""
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_CONTINUATION_TOKENS:
        raise UserError(f"max_new_tokens must be between 1 and {MAX_CONTINUATION_TOKENS}")
    if not 0.0 <= temperature <= 2.0:
        raise UserError("temperature must be between 0 and 2")
    ids = prompt_ids(ins, prompt, chat)
    weights = check_weights(ins, weights)
    kw = dict(max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
    runs = [("base", lambda: base_context(ins)), ("adapter", lambda: mixed(ins, weights))]
    if bias:
        runs.append(("bias", lambda: _stack(mixed(ins, weights), logit_bias(ins, bias))))
    out = {}
    with ins.lock:
        for name, ctxm in runs:
            with ctxm():
                new = generate_ids(ins.loaded, [ids], **kw)[0]
            out[name] = {"ids": new, "text": ins.tokenizer.decode(new, skip_special_tokens=True)}
    return {"seed": seed, "temperature": temperature, "weights": weights, "generations": out}


def bias_from_corrections(tok, corrections: Sequence[Mapping], strength: float = 5.0) -> dict[int, float]:
    """Logit bias of a list of corrections: +strength on each chosen text's first token,
    −strength on the token it replaced (when the correction names one)."""
    bias: dict[int, float] = {}
    for c in corrections:
        chosen = tok.encode(c.get("chosen") or "", add_special_tokens=False)
        if chosen:
            bias[chosen[0]] = bias.get(chosen[0], 0.0) + strength
        rid = c.get("replaced_id")
        if rid is not None and (not chosen or int(rid) != chosen[0]):
            bias[int(rid)] = bias.get(int(rid), 0.0) - strength
    return bias


def continue_from(ins: Inspector, prompt: str, prefix: str, weights: Mapping[str, float], *, chat: bool = True,
                  seed: int = 0, max_new_tokens: int = 48, temperature: float = 0.0) -> dict:
    """The rest of an answer generated by the mix from a corrected prefix (the continuation up to
    the corrected position plus the chosen text): {"rest": text, "ids": new token ids}."""
    if not isinstance(max_new_tokens, int) or not 1 <= max_new_tokens <= MAX_CONTINUATION_TOKENS:
        raise UserError(f"max_new_tokens must be between 1 and {MAX_CONTINUATION_TOKENS}")
    if not prefix:
        raise UserError("nothing to continue from: choose a token or type the text first")
    ctx = prompt_ids(ins, prompt, chat)
    ids = ctx + ins.tokenizer.encode(prefix, add_special_tokens=False)
    with ins.lock, mixed(ins, weights):
        new = generate_ids(ins.loaded, [ids], max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)[0]
    return {"rest": ins.tokenizer.decode(new, skip_special_tokens=True), "ids": [int(i) for i in new]}


def continuation_for(ins: Inspector, prompt: str, weights: Mapping[str, float], *, chat: bool = True,
                     seed: int = 0, max_new_tokens: int = 48) -> str:
    """A continuation generated by the mix (greedy), to inspect when none is pasted."""
    ids = prompt_ids(ins, prompt, chat)
    with ins.lock, mixed(ins, weights):
        new = generate_ids(ins.loaded, [ids], max_new_tokens=max_new_tokens, seed=seed)[0]
    return ins.tokenizer.decode(new, skip_special_tokens=True)
