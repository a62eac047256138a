"""Device and dtype policy, decided by measurement, in one place.

Processors of the same family differ: an Intel Xeon with AMX runs bf16 matmuls ~6x its
fp32, one with AVX-512 BF16 but no AMX runs them at half its fp32, an AMD EPYC with
AVX-512 BF16 + VNNI runs bf16 3x and int8 4x its fp32. No flag predicts this, so on first
use the policy times the model's own matmul shapes (the projections of one decoder layer
and a slice of the vocabulary projection; SmolLM2-135M's unless told) in fp32, bf16 and
int8 (dynamic quantization, the kernels VNNI/AMX speed up where the CPU has them) for
about a second, caches the result under $LORALAB_HOME/device/ keyed by (device name,
torch version, threads, shapes), and chooses per path:

  frozen  forward passes over frozen weights (scoring, evaluation, serving): the fastest
          floating-point format (fp32 or bf16/fp16); int8 only when asked for
          (`loralab data score --precision fast`: `fast_candidates`, fastest first, each
          used only once loralab.fidelity measured that it ranks IFD like fp32)
  train   frozen base weights of LoRA training (adapters keep fp32 master weights and
          optimizer state): the fastest floating-point format

A low-precision format is chosen only when it is at least `MARGIN` times faster than fp32
(a small gain is not worth the rounding). `loralab doctor` prints the measured peaks and
the choices. Every entry point still takes an override (`--device`, `--dtype`);
LORALAB_CPU_BF16=1|0 forces the CPU's floating-point choice without measuring.
`precision_record(model)` says which device and format produced a number.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from .io import write_json

DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}
PATHS = ("frozen", "train")
MARGIN = 1.15  # a low-precision format must beat fp32 by this factor to be chosen
INT8 = "int8-dynamic"  # frozen linears as int8 weights, activations quantized per call
# SmolLM2-135M (the default model): hidden, intermediate, key/value width, vocabulary
DEFAULT_SHAPES = (576, 1536, 192, 49152)
PROFILE_VERSION = "1"


def _name(dt: torch.dtype) -> str:
    return str(dt).removeprefix("torch.")


# ------------------------------------------------------------ device identity

@functools.cache
def device_name(dev_type: str = "cpu") -> str:
    """The processor's model name (lscpu's 'Model name'), or the GPU's name."""
    if dev_type == "cuda":
        return torch.cuda.get_device_name()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def shapes_of(config) -> tuple[int, int, int, int]:
    """(hidden, intermediate, key/value width, vocab) of an HF decoder config."""
    h = config.hidden_size
    heads = getattr(config, "num_attention_heads", 1)
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    return h, getattr(config, "intermediate_size", 4 * h), kv * head_dim, config.vocab_size


def profile_key(dev_type: str, shapes: tuple[int, ...], threads: int | None = None) -> dict:
    """What a measurement depends on; its digest names the cache file."""
    return {"device": dev_type, "name": device_name(dev_type), "torch": torch.__version__,
            "threads": threads if threads is not None else torch.get_num_threads(),
            "shapes": list(shapes), "version": PROFILE_VERSION}


def cache_path(key: dict, root: str | Path | None = None) -> Path:
    """$LORALAB_HOME/device/<digest of key>.json (or under `root`)."""
    if root is None:  # $LORALAB_HOME as models.home() reads it (device sits below models)
        import platformdirs

        root = Path(os.environ.get("LORALAB_HOME") or platformdirs.user_cache_dir("loralab")) / "device"
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return Path(root) / f"{digest}.json"


# ---------------------------------------------------------------- measuring

def _layer_mats(shapes: tuple[int, int, int, int], m: int, vocab_cols: int) -> list[tuple[int, int]]:
    """(in, out) of one decoder layer's projections and of a vocabulary-projection slice."""
    h, inter, kv, vocab = shapes
    return [(h, h), (h, kv), (h, kv), (h, h), (h, inter), (h, inter), (inter, h), (h, min(vocab, vocab_cols))]


def _int8_linears(mats, dev) -> list:
    from torch.ao.quantization import quantize_dynamic

    seq = torch.nn.Sequential(*[torch.nn.Linear(i, o, bias=False) for i, o in mats])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        return list(quantize_dynamic(seq, {torch.nn.Linear}, dtype=torch.qint8))


def _time_format(fmt: str, shapes, dev: torch.device, m: int, seconds: float, vocab_cols: int) -> float:
    """GFLOP/s of one round of the model's matmuls in `fmt`, best round within `seconds`."""
    mats = _layer_mats(shapes, m, vocab_cols)
    flops = sum(2 * m * i * o for i, o in mats)
    gen = torch.Generator().manual_seed(0)
    if fmt == INT8:
        lins = _int8_linears(mats, dev)
        xs = [torch.randn(m, i, generator=gen) for i, _ in mats]
        run = lambda: [lin(x) for lin, x in zip(lins, xs)]  # noqa: E731
    else:
        dt = DTYPES[fmt]
        ws = [torch.randn(o, i, generator=gen).to(dev, dt) for i, o in mats]
        xs = [torch.randn(m, i, generator=gen).to(dev, dt) for i, _ in mats]
        run = lambda: [torch.nn.functional.linear(x, w) for x, w in zip(xs, ws)]  # noqa: E731
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    with torch.inference_mode():
        run()  # warm-up: kernel selection, weight packing
        sync()
        best, start = float("inf"), time.perf_counter()
        while time.perf_counter() - start < seconds or best == float("inf"):
            t = time.perf_counter()
            run()
            sync()
            best = min(best, time.perf_counter() - t)
    return flops / best / 1e9


def formats_for(dev: torch.device) -> list[str]:
    """Formats worth timing on `dev` (int8 dynamic quantization runs on CPUs only)."""
    if dev.type == "cuda":
        out = ["float32", "bfloat16" if torch.cuda.is_bf16_supported() else "float16"]
        return out
    return ["float32", "bfloat16", INT8]


def measure(dev: torch.device, shapes=DEFAULT_SHAPES, *, rows: int = 128, seconds: float = 0.2,
            vocab_cols: int = 8192) -> dict[str, float]:
    """GFLOP/s per format on `dev` for `shapes`; ~`seconds` per format. Rounds alternate
    formats, so a machine that slows down part-way does not favour the first one."""
    fmts = formats_for(dev)
    out: dict[str, float] = {}
    for _ in range(2):  # two alternating passes, best of both
        for f in fmts:
            try:
                g = _time_format(f, tuple(shapes), dev, rows, seconds / 2, vocab_cols)
            except (RuntimeError, NotImplementedError):  # a format this build cannot run
                g = 0.0
            out[f] = max(out.get(f, 0.0), g)
    return out


@dataclass(frozen=True)
class Profile:
    """Measured matmul throughput per format (GFLOP/s) and what it depends on."""

    key: dict
    gflops: dict[str, float]
    path: Path | None = None
    cached: bool = False

    def choose(self, path: str) -> str:
        return choose(self.gflops, path)


def choose(gflops: dict[str, float], path: str, *, allow_int8: bool = False) -> str:
    """The format for `path` from measured GFLOP/s: the fastest floating-point format (int8
    too when allowed), low precision only when >= MARGIN x fp32."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; one of {', '.join(PATHS)}")
    base = gflops.get("float32", 0.0)
    low = {f: g for f, g in gflops.items()
           if f != "float32" and (f != INT8 or (allow_int8 and path == "frozen"))}
    best = max(low, key=low.get, default=None)
    return best if best is not None and low[best] >= MARGIN * base else "float32"


def fast_candidates(gflops: dict[str, float]) -> list[str]:
    """Low-precision formats for frozen weights (bf16/fp16, int8 dynamic) at least MARGIN x
    fp32, fastest first."""
    base = gflops.get("float32", 0.0)
    low = [f for f, g in gflops.items() if f != "float32" and g > 0 and g >= MARGIN * base]
    return sorted(low, key=lambda f: -gflops[f])


def fast_format(gflops: dict[str, float]) -> str:
    """The fastest of `fast_candidates` (fp32 when there is none). Fast scoring uses the first
    candidate that also passes loralab.fidelity's rank check."""
    return next(iter(fast_candidates(gflops)), "float32")


def profile(dev: torch.device | str = "cpu", shapes=DEFAULT_SHAPES, *, remeasure: bool = False,
            root: str | Path | None = None, **measure_kw) -> Profile:
    """The cached measurement for this device, taken now when absent (or when `remeasure`)."""
    dev = torch.device(dev)
    key = profile_key(dev.type, tuple(shapes))
    path = cache_path(key, root)
    if not remeasure and path.exists():
        try:
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                return Profile(key, saved["gflops"], path, cached=True)
        except (OSError, ValueError, KeyError):
            pass  # unreadable: measure again
    gflops = measure(dev, shapes, **measure_kw)
    # atomic: a concurrent reader sees the old file or the new one
    write_json(path, {"key": key, "gflops": gflops, "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    return Profile(key, gflops, path, cached=False)


def _forced_cpu_bf16() -> bool | None:
    forced = os.environ.get("LORALAB_CPU_BF16")
    return forced == "1" if forced in ("0", "1") else None


def cpu_has_bf16() -> bool:
    """True when bf16 is the faster choice for frozen weights on this CPU (measured)."""
    forced = _forced_cpu_bf16()
    if forced is not None:
        return forced
    return profile("cpu").choose("frozen") == "bfloat16"


# ---------------------------------------------------------------- placement

@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype  # dtype of frozen (inference) weights

    def __str__(self) -> str:
        return f"{self.device.type}/{_name(self.dtype)}"


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def auto_dtype(dev: torch.device, path: str = "frozen", shapes=DEFAULT_SHAPES) -> torch.dtype:
    """The measured floating-point choice for `path` on `dev`."""
    if dev.type not in ("cpu", "cuda"):
        return torch.float32
    if dev.type == "cpu":
        forced = _forced_cpu_bf16()
        if forced is not None:
            return torch.bfloat16 if forced else torch.float32
    return DTYPES[profile(dev, shapes).choose(path)]


def resolve(device: str = "auto", dtype: str = "auto", path: str = "frozen", shapes=DEFAULT_SHAPES) -> Placement:
    """Resolve 'auto' device/dtype into a concrete placement for frozen weights on `path`."""
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; one of {', '.join(PATHS)}")
    dev = resolve_device(device)
    if dtype == "auto":
        return Placement(dev, auto_dtype(dev, path, shapes))
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(sorted(DTYPES))}")
    return Placement(dev, DTYPES[dtype])


# ------------------------------------------------------------- int8 frozen weights

def quantize_int8(model) -> torch.nn.Module:
    """The nn.Linear layers of an fp32 CPU model used for inference as dynamic int8 (per-tensor
    int8 weights, activations quantized per call; the vocabulary projection included), in
    place; LoRA's own A/B matrices stay fp32. Returns the model."""
    from torch.ao.quantization import quantize_dynamic

    names = {n for n, m in model.named_modules() if type(m) is torch.nn.Linear and "lora_" not in n}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao's deprecation notices
        quantize_dynamic(model, names, dtype=torch.qint8, inplace=True)
    return model


def is_int8(model) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in model.modules())


# ----------------------------------------------------------------- the record

def precision_record(model=None, *, placement: Placement | None = None) -> dict:
    """What produced a number: device, its name, the frozen weights' format, torch version.

    `model` (an HF/PEFT model or a models.Loaded) is inspected; else `placement` is used.
    The `precision` string ('cpu/float32', 'cpu/int8-dynamic', 'cuda/bfloat16') is the part
    that belongs in cache keys and run ids."""
    if model is not None:
        model = getattr(model, "model", model) if hasattr(model, "fingerprint") else model
        frozen = [p for p in model.parameters() if not p.requires_grad and p.is_floating_point()]
        p0 = frozen[0] if frozen else next(model.parameters())
        dev, fmt = p0.device, INT8 if is_int8(model) else _name(p0.dtype)
    elif placement is not None:
        dev, fmt = placement.device, _name(placement.dtype)
    else:
        raise ValueError("precision_record needs a model or a placement")
    return {"precision": f"{dev.type}/{fmt}", "device": dev.type, "device_name": device_name(dev.type),
            "format": fmt, "torch": torch.__version__}


# ------------------------------------------------------------- `loralab doctor`

def doctor(device: str = "auto", dtype: str = "auto", *, remeasure: bool = False, shapes=DEFAULT_SHAPES) -> dict:
    """The measured peaks of this device and the choices the policy makes from them."""
    dev = resolve_device(device)
    prof = profile(dev, shapes, remeasure=remeasure)
    forced = _forced_cpu_bf16() if dev.type == "cpu" else None
    choices = {}
    for path in PATHS:
        measured = prof.choose(path)
        chosen = _name(resolve(device, dtype, path, shapes).dtype)
        why = ("--dtype" if dtype != "auto" else "LORALAB_CPU_BF16" if forced is not None else "measured")
        choices[path] = {"measured": measured, "chosen": chosen, "by": why}
    fast = fast_format(prof.gflops)
    cands = fast_candidates(prof.gflops)
    choices["score --precision fast"] = {
        "measured": fast, "chosen": "first passing: " + " > ".join(cands) if cands else fast,
        "by": "speed, then a rank check per model" if cands else "measured"}
    return {"device": dev.type, "name": prof.key["name"], "torch": prof.key["torch"], "threads": prof.key["threads"],
            "shapes": prof.key["shapes"], "gflops": prof.gflops, "margin": MARGIN, "choices": choices,
            "cache": str(prof.path), "cached": prof.cached}
