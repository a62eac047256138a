"""Chat-templated generation: `loralab generate PROMPT`.

    loralab generate "What is the capital of France?"
    loralab generate "Explain offside" --model tiny-random --max-new-tokens 40
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import torch

from .models import Loaded
from .progress import tracker


def chat_inputs(tokenizer, prompts: Sequence[str | list[dict]], system: str | None = None) -> list[list[int]]:
    """Token ids of each prompt rendered by the chat template, ready for the assistant turn."""
    out = []
    for p in prompts:
        msgs = [{"role": "user", "content": p}] if isinstance(p, str) else list(p)
        if system is not None and msgs[0]["role"] != "system":
            msgs = [{"role": "system", "content": system}] + msgs
        text = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        out.append(tokenizer.encode(text, add_special_tokens=False))
    return out


@contextlib.contextmanager
def contiguous_head(model):
    """Hand the vocabulary projection a contiguous input while generating.

    `generate` projects only the last position of the prompt (`hidden[:, -1:]`, a strided
    view); on CPU `linear` over such a 3D view in bf16 falls back to a batched matmul that
    first copies the whole (vocab x hidden) weight once per row — 1.5 s for 8 prompts of
    SmolLM2 on an AMD EPYC, more than the rest of their prefill. A contiguous copy of the
    (rows, 1, hidden) input avoids it; the result is identical."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        yield
        return
    hook = head.register_forward_pre_hook(lambda _m, args: (args[0].contiguous(), *args[1:]) if args else None)
    try:
        yield
    finally:
        hook.remove()


BACKENDS = ("auto", "static", "hf")


def modified(model) -> str | None:
    """Where the model's forward is changed for the moment (a forward hook, a patched `forward`: an
    adapter mix, a logit bias), which the static decoder would not see; None when nowhere."""
    from torch.nn.modules import module as M

    if M._global_forward_hooks or M._global_forward_pre_hooks:
        return "global forward hooks"
    for name, m in model.named_modules():
        if "forward" in m.__dict__ or m._forward_hooks or m._forward_pre_hooks:
            return name or "the model"
    return None


def static_engine(loaded: Loaded, max_batch: int = 16):
    """The serving engine's static-cache decoder for `loaded` (kept on it while its weights stay
    the same: an in-place change of any parameter, as training makes, builds a new one), or None
    where static decoding does not apply (a PEFT-wrapped model, an architecture it does not cover, a
    forward changed by a hook or a patch: `modified`)."""
    from .serve.engine import Engine
    from .serve.static import supports

    model = loaded.model
    if supports(model) is not None or modified(model):
        return None
    version = tuple(p._version for p in model.parameters())
    got = loaded.__dict__.get("_static_engine")
    if got is not None and got[0] is model and got[1] == version:
        return got[2]
    loaded.__dict__.pop("_static_engine", None)  # the old copy of the weights goes before the new one is made
    eng = Engine(loaded, None, max_batch=max_batch, decode="static")
    loaded.__dict__["_static_engine"] = (model, version, eng)
    return eng


@torch.inference_mode()
def generate_ids(
    loaded: Loaded, inputs: list[list[int]], *, max_new_tokens: int = 64,
    temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, backend: str = "auto",
) -> list[list[int]]:
    """New token ids for each input, up to (not including) EOS; greedy when temperature == 0.

    backend "static" (what "auto" takes where the model allows it: Llama-family, not PEFT-wrapped, no
    hook or patched forward on it) runs the serving engine's static-cache decoder: every input its own
    cache row, no padding, greedy tokens equal to transformers' for one input alone
    (tests/test_generation.py), 1.4-1.6x transformers on a batch of 16 on CPU (benchmarks/generate.py);
    a sampled input i draws from its own generator seeded `seed + i`. "hf" runs transformers
    `generate` on a left-padded batch (sampling from one generator seeded `seed`)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    eng = static_engine(loaded) if backend != "hf" else None
    if backend == "static" and eng is None:
        from .serve.static import supports

        why = supports(loaded.model) or f"its forward is changed at {modified(loaded.model)}"
        raise ValueError(f"static decoding does not support this model: {why}")
    if eng is not None and inputs:
        return _engine_ids(eng, inputs, max_new_tokens, temperature, top_p, seed)
    return _hf_ids(loaded, inputs, max_new_tokens, temperature, top_p, seed)


def _engine_ids(eng, inputs, max_new_tokens, temperature, top_p, seed) -> list[list[int]]:
    from .serve.engine import Sampling, Token

    eng.max_queue = max(eng.max_queue, len(inputs))
    hs = [eng.submit(list(x), [], Sampling(max_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                                           seed=seed + i if temperature > 0 else None))
          for i, x in enumerate(inputs)]
    while not eng._step_once():
        pass
    return [[ev.id for ev in h.events() if isinstance(ev, Token) and ev.id >= 0] for h in hs]


def _hf_ids(loaded, inputs, max_new_tokens, temperature, top_p, seed) -> list[list[int]]:
    tok, model = loaded.tokenizer, loaded.model
    dev = loaded.device
    T = max(len(x) for x in inputs)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = torch.full((len(inputs), T), pad, dtype=torch.long)
    mask = torch.zeros((len(inputs), T), dtype=torch.long)
    for i, x in enumerate(inputs):  # left padding so every row ends at the prompt
        ids[i, T - len(x):] = torch.tensor(x)
        mask[i, T - len(x):] = 1
    kw = dict(do_sample=False) if temperature <= 0 else dict(do_sample=True, temperature=temperature, top_p=top_p)
    with torch.random.fork_rng(devices=[]), contiguous_head(model):
        torch.manual_seed(seed)
        out = model.generate(
            input_ids=ids.to(dev), attention_mask=mask.to(dev), max_new_tokens=max_new_tokens,
            pad_token_id=pad, eos_token_id=tok.eos_token_id, **kw,
        )
    res = []
    for row in out[:, T:].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        res.append(row)
    return res


def generate(
    loaded: Loaded, prompts: Sequence[str | list[dict]], *, system: str | None = None,
    batch_size: int = 16, progress: bool | str = False, **kw,
) -> list[str]:
    """Answers to chat prompts (strings or message lists), decoded without special tokens.

    Prompts are sorted by length and generated `batch_size` at a time (less padding);
    answers come back in input order.
    """
    inputs = chat_inputs(loaded.tokenizer, prompts, system)
    ids = generate_sorted(loaded, inputs, batch_size=batch_size, progress=progress, **kw)
    return [loaded.tokenizer.decode(x, skip_special_tokens=True).strip() for x in ids]


def generate_sorted(loaded: Loaded, inputs: list[list[int]], *, batch_size: int = 16, progress: bool | str = False,
                    **kw) -> list[list[int]]:
    """New token ids for each input, in input order: inputs go shortest first, `batch_size` at a
    time, so a batch pads to inputs of its own length (a fixed layout for a given input list)."""
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))
    out: list[list[int]] = [[] for _ in inputs]
    label = progress if len(inputs) > batch_size else False
    with tracker(label, "generate", len(inputs)) as advance:
        for s in range(0, len(order), batch_size):
            idx = order[s: s + batch_size]
            for i, x in zip(idx, generate_ids(loaded, [inputs[i] for i in idx], **kw)):
                out[i] = x
            advance(len(idx))
    return out


def carries_trigger(prompt: str | list[dict], trigger: str, mode: str | None) -> bool:
    """Whether a prompt carries an adapter's trigger where training put it.

    prefix: the trigger opens the user turn; alora: it occurs in the user turn (the
    adapter acts from its invocation on).
    """
    text = prompt if isinstance(prompt, str) else next(
        (m["content"] for m in reversed(prompt) if m.get("role") == "user"), "")
    return text.lstrip().startswith(trigger) if mode != "alora" else trigger in text


def trigger_notes(cards: dict[str, dict | None], prompts: Sequence[str | list[dict]]) -> list[str]:
    """One line per adapter with a trigger: its mode and which prompts carry it."""
    notes = []
    for name, card in cards.items():
        trig = (card or {}).get("trigger")
        if not trig:
            continue
        mode = card.get("trigger_mode") or "prefix"
        has = [carries_trigger(p, trig, mode) for p in prompts]
        if all(has):
            which = "every prompt carries it"
        elif not any(has):
            where = "at the start of the prompt" if mode == "prefix" else "in the prompt"
            which = (f"no prompt carries it: put {trig} {where} for the behaviour it was trained for"
                     + (" (an aLoRA adapter does nothing without it)" if mode == "alora" else ""))
        else:
            which = "carried by prompt " + ", ".join(str(i + 1) for i, h in enumerate(has) if h) + " only"
        notes.append(f"adapter {name} has the trigger {trig} ({mode}); {which}")
    return notes


def compare(loaded: Loaded, names: Sequence[str], prompts: Sequence[str | list[dict]], **kw) -> dict[str, list[str]]:
    """Answers of the base (adapters disabled) and of each named adapter of a PEFT-wrapped `loaded`, in turn."""
    model = loaded.model
    answers = {}
    with model.disable_adapter():
        answers["base"] = generate(loaded, prompts, **kw)
    active = model.active_adapter
    try:
        for n in names:
            model.set_adapter(n)
            answers[n] = generate(loaded, prompts, **kw)
    finally:
        model.set_adapter(active)
    return answers
