"""The adapter folder: plain PEFT files + a `loralab.json` card; loading with checks.

    run/adapter/
      adapter_config.json         PEFT (read by vLLM, LoRAX, lm-eval, mergekit)
      adapter_model.safetensors   PEFT weights (LoRA A/B, trained token rows)
      tokenizer*.json ...         only when tokens were added (e.g. a trigger token)
      loralab.json                the card: base fingerprint, data digest, trigger,
                                  resolved config, training curve, code version

Full-model runs (`method: full | scratch`) write a model folder (save_pretrained)
with the same card instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import re
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch

from .errors import UserError
from .io import read_json, write_json

CARD = "loralab.json"
CARD_FORMAT = "loralab-adapter/1"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


class AdapterError(UserError):
    """An adapter that cannot be applied to a base; the message lists every problem."""


def data_digest(data_dir: str | Path) -> str | None:
    """sha256 of a records folder's data_card.json (else of its records.jsonl)."""
    p = Path(data_dir)
    for f in (p / "data_card.json", p / "records.jsonl", p):
        if f.is_file():
            return hashlib.sha256(f.read_bytes()).hexdigest()
    return None


def resolve_folder(path: str | Path) -> Path:
    """An adapter folder, or a run folder holding one under adapter/."""
    p = Path(path).expanduser()
    if not (p / "adapter_config.json").exists() and (p / "adapter" / "adapter_config.json").exists():
        return p / "adapter"
    return p


def load_card(path: str | Path) -> dict[str, Any] | None:
    """The folder's loralab.json card (None for a plain PEFT adapter without one), its
    `data.path` resolved to where the training records are now (`data_path`)."""
    folder = resolve_folder(path)
    f = folder / CARD
    if not f.exists():
        return None
    card = read_json(f)
    found = data_path(folder, card)
    if found is not None:
        card["data"] = {**card["data"], "path": found}
    return card


def data_path(folder: str | Path, card: dict[str, Any]) -> str | None:
    """Where the records an adapter was trained on are, whatever the current directory: the card's
    `data.path` when absolute; else relative to the adapter folder, then the absolute path training
    recorded (`data.abspath`), then relative to the current directory (cards written before
    `abspath`). None when none of them exists."""
    d = card.get("data") or {}
    p = d.get("path")
    if not p:
        return None
    p = Path(p)
    cands = [p] if p.is_absolute() else [Path(folder) / p, Path(d["abspath"]) if d.get("abspath") else None, p]
    return next((str(c) for c in cands if c is not None and c.exists()), None)


ROLES = ("knowledge", "style", "epistemic", "metacognitive")


def data_role(data_dir: str | Path | None) -> str | None:
    """The adapter role a records folder's data card suggests (recipes write one), else None."""
    p = Path(data_dir) / "data_card.json" if data_dir else None
    if p is None or not p.is_file():
        return None
    try:
        role = read_json(p).get("role")
    except (OSError, ValueError, AttributeError):
        return None
    return role if role in ROLES else None


def write_card(folder: str | Path, card: dict[str, Any]) -> None:
    """The card, with `role` (one of ROLES or None) and `keywords` (list of str) always at the top level.

    Without a role in the card or its config, the training data's card may suggest one.
    """
    cfg = card.get("config") or {}
    role = card.get("role", cfg.get("role")) or data_role((card.get("data") or {}).get("path"))
    card = {**card, "role": role, "keywords": list(card.get("keywords") or cfg.get("keywords") or [])}
    write_json(Path(folder) / CARD, {"format": CARD_FORMAT, **card})


def save_adapter(model, folder: str | Path, *, tokenizer=None, card: dict[str, Any]) -> None:
    """PEFT files (+ tokenizer when given) + card into `folder` (the caller makes it atomic)."""
    # embedding matrices are never copied: trained token rows are PEFT trainable tokens
    model.save_pretrained(folder, save_embedding_layers=False)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    write_card(folder, card)


def save_full_model(model, folder: str | Path, *, tokenizer, card: dict[str, Any]) -> None:
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    write_card(folder, card)


def peft_model(model):
    """The PeftModel inside `model` (itself, or None for a plain HF model: transformers' own
    models may carry a `peft_config` attribute without being PEFT-wrapped)."""
    from peft import PeftModel

    return model if isinstance(model, PeftModel) else None


def is_alora(model) -> bool:
    """True when the active adapter is an activated LoRA (alora_invocation_tokens set)."""
    pm = peft_model(model)
    return pm is not None and bool(getattr(pm.active_peft_config, "alora_invocation_tokens", None))


def alora_context(model, input_ids: torch.Tensor):
    """Context that feeds PEFT's activated-LoRA offsets to the LoRA layers.

    PEFT computes aLoRA offsets only in PeftModelForCausalLM.forward; calling the decoder
    directly skips that, which leaves aLoRA layers inactive (base output). This computes the
    same offsets from `input_ids` (B, T) and installs the same forward hooks.
    """
    pm = peft_model(model)
    if pm is None or not getattr(pm.active_peft_config, "alora_invocation_tokens", None):
        return contextlib.nullcontext()
    from peft.tuners.lora.variants import calculate_alora_offsets

    offsets = calculate_alora_offsets(pm.peft_config, pm.active_adapter, input_ids)
    return pm.base_model._enable_peft_forward_hooks(alora_offsets=offsets)


def _adapter_tokenizer(folder: Path):
    if not (folder / "tokenizer_config.json").exists():
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder)


MAX_ADDED_TOKENS = 4096  # trigger tokens are a handful; more is a hostile or foreign tokenizer
MAX_TOKENIZER_BYTES = 64 * 2**20


def _file_problems(f: Path, model) -> list[str]:
    """The adapter's files checked before loading: safetensors header, shapes against the
    base's modules, adapter_config.json, and the size of an added tokenizer."""
    from .tensorfile import TensorFileError, adapter_problems, read_header

    st, cfg_file, tok_file = f / "adapter_model.safetensors", f / "adapter_config.json", f / "tokenizer.json"
    if not (st.exists() and cfg_file.exists()):
        return []  # reported as missing files
    try:
        cfg = read_json(cfg_file)
        if not isinstance(cfg, dict):
            raise ValueError
    except (OSError, ValueError):
        return [f"{f}: adapter_config.json is not a JSON mapping"]
    try:
        header = read_header(st)
    except TensorFileError as e:
        return [str(e)]
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    problems = [f"{f}: {p}" for p in adapter_problems(header, base, cfg)]
    if tok_file.exists():
        if tok_file.stat().st_size > MAX_TOKENIZER_BYTES:
            problems.append(f"{f}: tokenizer.json is {tok_file.stat().st_size} bytes (over {MAX_TOKENIZER_BYTES})")
        else:
            try:
                added = len(read_json(tok_file).get("added_tokens") or [])
            except (OSError, ValueError, AttributeError):
                return problems + [f"{f}: tokenizer.json is not a JSON mapping"]
            if added > MAX_ADDED_TOKENS:
                problems.append(f"{f}: its tokenizer adds {added} tokens (at most {MAX_ADDED_TOKENS} accepted)")
    return problems


def check(loaded, folders: Sequence[Path]) -> tuple[list[str], Any]:
    """(every problem found, tokenizer to use) for applying `folders` to `loaded`."""
    problems: list[str] = []
    tokenizer = None
    rows = loaded.model.get_input_embeddings().weight.shape[0]
    for f in folders:
        if not f.is_dir():
            problems.append(f"{f}: no such adapter folder")
            continue
        card = load_card(f) or {}
        if card.get("kind") == "model":
            problems.append(f"{f}: a full model (method {card.get('method')}); load it as the model, not an adapter")
            continue
        problems += [f"{f}: missing {name}" for name in ADAPTER_FILES if not (f / name).exists()]
        base_fp = (card.get("base") or {}).get("fingerprint")
        if base_fp and base_fp != loaded.fingerprint:
            problems.append(
                f"{f}: trained on base {card['base'].get('spec')!r} (fingerprint {base_fp}), "
                f"but the loaded base {loaded.spec!r} has fingerprint {loaded.fingerprint}")
        wrong = _file_problems(f, loaded.model)
        if wrong:  # never hand a lying file to PEFT or a tokenizer to transformers
            problems += wrong
            continue
        tok = _adapter_tokenizer(f)
        want = len(tok) if tok is not None else len(loaded.tokenizer)
        if tok is not None:
            theirs = tok.get_vocab()  # built once: get_vocab() makes a fresh dict per call
            clash = [t for t, i in loaded.tokenizer.get_vocab().items() if theirs.get(t) != i]
            if clash:
                problems.append(f"{f}: its tokenizer disagrees with the base's on {len(clash)} tokens "
                                f"(e.g. {clash[:3]})")
            if tokenizer is not None and tokenizer.get_vocab() != tok.get_vocab():
                problems.append(f"{f}: adds different tokens than another adapter in the same load")
            tokenizer = tok
        trained = card.get("vocab_size")
        if trained and trained != max(want, rows):
            problems.append(f"{f}: trained with {trained} embedding rows, but the base with this tokenizer "
                            f"gives {max(want, rows)} (tokenizer {want})")
    return problems, tokenizer


def has_trained_tokens(folder: Path) -> bool:
    """The adapter trains token rows (added trigger tokens): PEFT trainable_token_indices is set."""
    cfg = Path(folder) / "adapter_config.json"
    return cfg.exists() and bool(read_json(cfg).get("trainable_token_indices"))


def adapter_names(folders: Sequence[Path]) -> list[str]:
    """The unique, PEFT-safe names `apply_adapters` gives these folders (also used for whole models)."""
    return _names(folders, None)


def _names(folders: Sequence[Path], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(folders):
            raise AdapterError(f"{len(names)} names for {len(folders)} adapters")
        return list(names)
    out: list[str] = []
    for f in folders:
        base = re.sub(r"\W+", "_", f.parent.name if f.name == "adapter" else f.name).strip("_") or "adapter"
        if hasattr(torch.nn.Module, base) or base in ("base_model", "model", "default"):
            base += "_adapter"  # PEFT sets the name as a module attribute: never shadow one (e.g. train)
        name, k = base, 1
        while name in out:
            k += 1
            name = f"{base}_{k}"
        out.append(name)
    return out


def apply_adapters(loaded, paths: Sequence[str | Path], names: Sequence[str] | None = None):
    """A new Loaded whose model is the base wrapped by PEFT with every adapter loaded.

    The first adapter is active. Every mismatch (base fingerprint, missing files, vocabulary)
    is reported at once in one AdapterError. When an adapter folder holds a tokenizer with
    added tokens, the base embeddings are resized first (the trained rows come from the
    adapter) and the returned Loaded carries that tokenizer.
    """
    from peft import PeftModelForCausalLM

    folders = [resolve_folder(p) for p in paths]
    if not folders:
        return loaded
    problems, tokenizer = check(loaded, folders)
    if problems:
        raise AdapterError("cannot apply adapters:\n  " + "\n  ".join(problems))
    model = loaded.model
    if tokenizer is not None and len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        with torch.random.fork_rng(devices=[]):  # resizing samples the new rows; keep the caller's RNG
            model.resize_token_embeddings(len(tokenizer))
    names = _names(folders, names)
    # PEFT looks up every trainable-token wrapper's key in each adapter loaded after the wrapper
    # exists, so an adapter without trained tokens (aLoRA, DoRA, plain LoRA) loaded after one with
    # them fails with a KeyError on '...embed_tokens.token_adapter.trainable_tokens_delta'. Loading
    # the adapters without trained tokens first avoids that; the first one named is then activated.
    order = sorted(range(len(folders)), key=lambda i: has_trained_tokens(folders[i]))
    with warnings.catch_warnings():
        # a tied lm_head shares the embedding's trained token rows; PEFT reports its key as missing
        warnings.filterwarnings("ignore", r"Found missing adapter keys.*lm_head\.token_adapter")
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
        # always the causal-LM wrapper: a plain PEFT adapter saved without task_type would otherwise get the
        # generic PeftModel, whose forward never feeds aLoRA adapters loaded beside it their offsets
        model = PeftModelForCausalLM.from_pretrained(model, str(folders[order[0]]), adapter_name=names[order[0]])
        for i in order[1:]:
            model.load_adapter(str(folders[i]), adapter_name=names[i])
    model.set_adapter(names[0])
    model.eval()
    return dataclasses.replace(loaded, model=model, tokenizer=tokenizer or loaded.tokenizer)


# ---------------------------------------------------------------- listing

def find_adapters(root: str | Path, max_depth: int = 6) -> list[Path]:
    """Adapter folders (PEFT files or a loralab card) under `root`, sorted; hidden and temp folders skipped."""
    import os

    root = Path(root)
    if (root / "adapter_config.json").exists() or (root / CARD).exists():
        return [root]
    found = []
    base_depth = len(root.parts)
    for d, dirs, files in os.walk(root):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        if "adapter_config.json" in files or CARD in files:
            found.append(Path(d))
            dirs[:] = []  # checkpoints and the like below an adapter are not adapters
        elif len(Path(d).parts) - base_depth >= max_depth:
            dirs[:] = []
    return found


def describe(folder: str | Path) -> dict[str, Any]:
    """One row about an adapter folder: what it was trained from, how, and how it ended (from its card)."""
    folder = Path(folder)
    card = load_card(folder) or {}
    peft_cfg = read_json(folder / "adapter_config.json") if (folder / "adapter_config.json").exists() else {}
    cfg = card.get("config") or {}
    curve = card.get("curve") or {}
    data = card.get("data") or {}
    method = card.get("method") or ("dora" if peft_cfg.get("use_dora") else "lora" if peft_cfg else None)
    return {
        "path": str(folder),
        "base": (card.get("base") or {}).get("spec") or peft_cfg.get("base_model_name_or_path"),
        "domain": card.get("domain"),
        "method": method,
        "rank": peft_cfg.get("r") or cfg.get("rank"),
        "trigger": card.get("trigger"),
        "trigger_mode": card.get("trigger_mode") or ("alora" if peft_cfg.get("alora_invocation_tokens") else None),
        "role": card.get("role", cfg.get("role")),
        "keywords": card.get("keywords") or cfg.get("keywords") or [],
        "data": data.get("path"),
        "data_digest": (data.get("digest") or "")[:12] or None,
        "train_examples": card.get("train_examples"),
        "steps": curve.get("steps"),
        "train_loss": (curve.get("first_loss"), curve.get("last_loss")),
        "eval_loss": (curve.get("eval_before"), curve.get("eval_after")),
        "created": card.get("created"),
        "card": bool(card),
    }
