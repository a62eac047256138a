"""Adapters composed by weights at inference: `--adapter A[:w] --adapter B[:w]`.

    from loralab.compose import compose, parse_specs
    loaded = compose(models.load("smollm2-135m"), parse_specs(["runs/sport:1", "runs/metacog:0.5"]))

Every adapter is loaded beside the others by `adapters.apply_adapters` (one PEFT
model, no copy of the base), all of them are made active together, and each one's
LoRA scale is set to w · alpha / r (PEFT's `set_scale`). PEFT's LoRA forward then adds
every active adapter's scaled update to the base output:
    h = W x + Σ_i w_i · (alpha_i / r_i) · B_i A_i x
so weight 1 is the adapter as trained, 0 removes its contribution exactly, and the
LoRA arithmetic stays PEFT's own (no second implementation here).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from .adapters import AdapterError, apply_adapters, peft_model


def parse_spec(text: str) -> tuple[str, float]:
    """'runs/sport:0.5' -> ('runs/sport', 0.5); 'runs/sport' -> ('runs/sport', 1.0)."""
    path, sep, w = text.rpartition(":")
    if sep and path:
        try:
            return path, float(w)
        except ValueError:
            pass  # a ':' that is part of the path
    return text, 1.0


def parse_specs(texts: Sequence[str]) -> list[tuple[str, float]]:
    return [parse_spec(t) for t in texts]


def set_weights(model, weights: dict[str, float]) -> None:
    """Activate exactly the named adapters, each LoRA layer scaled by its weight."""
    from peft.tuners.lora.layer import LoraLayer

    pm = peft_model(model)
    if pm is None:
        raise AdapterError("no adapters loaded to compose")
    unknown = [n for n in weights if n not in pm.peft_config]
    if unknown:
        raise AdapterError(f"no adapter named {', '.join(unknown)} (loaded: {', '.join(pm.peft_config)})")
    pm.base_model.set_adapter(list(weights), inference_mode=True)
    for m in pm.modules():
        if isinstance(m, LoraLayer):
            for name, w in weights.items():
                m.set_scale(name, w)


def compose(loaded, specs: Sequence[tuple[str | Path, float]], names: Sequence[str] | None = None):
    """A Loaded with every adapter of `specs` active at its weight (see the module text)."""
    if not specs:
        return loaded
    bad = [f"{p}: weight {w}" for p, w in specs if w != w]  # NaN
    if bad:
        raise AdapterError("invalid adapter weights: " + ", ".join(bad))
    out = apply_adapters(loaded, [p for p, _ in specs], names)
    pm = peft_model(out.model)
    order = list(pm.peft_config)  # apply_adapters loads them in the given order
    set_weights(out.model, {n: w for n, (_, w) in zip(order, specs)})
    return out


def describe(specs: Sequence[tuple[str | Path, float]]) -> str:
    """'base' or 'sport:1 + metacog:0.5' (folder names) for tables."""
    if not specs:
        return "base"
    parts = []
    for p, w in specs:
        q = Path(p)
        name = q.parent.name if q.name == "adapter" else q.name
        parts.append(f"{name}:{w:g}")
    return " + ".join(parts)
