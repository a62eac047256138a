"""Reading parents (PEFT adapter folders, HF model folders) and writing merged folders.

An adapter parent is read into its LoRA factors per module with the scale PEFT applies
(alpha/r, alpha/√r with rsLoRA, per-module alpha_pattern), so `delta = scale·B·A` is
exactly what PEFT adds to the base. Anything whose effect is not such a delta (DoRA's
magnitude vectors, trained token rows, activated LoRA, modules_to_save, LoRA biases,
PiSSA-style initialisations) is refused with a message naming the folder and the reason.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ..adapters import AdapterError, load_card, resolve_folder, write_card
from ..errors import UserError

WEIGHTS = "adapter_model.safetensors"
CONFIG = "adapter_config.json"
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.weight$")
# files copied from a model parent to a merged model folder (weights are written anew)
MODEL_SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "chat_template.jinja", "vocab.json", "merges.txt")


class MergeError(UserError):
    """Parents that cannot be merged, or a merge whose result is unusable."""


@dataclass
class Factors:
    A: torch.Tensor  # (r, in)
    B: torch.Tensor  # (out, r)
    scale: float  # PEFT's scaling: delta = scale · B @ A

    def delta(self) -> torch.Tensor:
        return self.scale * (self.B.float() @ self.A.float())


@dataclass
class AdapterParent:
    path: Path
    config: dict[str, Any]
    card: dict[str, Any] | None
    modules: dict[str, Factors] = field(default_factory=dict)  # key prefix (PEFT's saved name) -> factors

    @property
    def rank(self) -> int:
        return max((f.A.shape[0] for f in self.modules.values()), default=0)


# ------------------------------------------------------------------ classify

def kind_of(path: str | Path) -> str:
    """'adapter' (PEFT folder, or a run folder holding adapter/) or 'model' (HF model folder)."""
    p = resolve_folder(path)
    if (p / CONFIG).exists():
        return "adapter"
    if (p / "config.json").exists() and any(p.glob("*.safetensors")):
        return "model"
    if not p.exists():
        raise MergeError(f"{path}: no such folder")
    raise MergeError(f"{path}: neither a PEFT adapter folder ({CONFIG}) nor an HF model folder "
                     "(config.json + *.safetensors)")


# ------------------------------------------------------------------ adapters

def _refusals(cfg: dict[str, Any]) -> list[str]:
    """Why PEFT would add something other than scale·B·A for this adapter (empty: mergeable)."""
    why = []
    if cfg.get("peft_type", "LORA") != "LORA":
        why.append(f"peft_type {cfg.get('peft_type')} (only LoRA adapters merge)")
    if cfg.get("use_dora"):
        why.append("DoRA (its magnitude vector rescales W + ΔW per column, so deltas do not add)")
    if cfg.get("trainable_token_indices"):
        why.append("trained token rows (a trigger token's embedding is not a low-rank delta)")
    if cfg.get("alora_invocation_tokens"):
        why.append("activated LoRA (it acts only after its invocation tokens)")
    if cfg.get("modules_to_save"):
        why.append(f"modules_to_save {cfg['modules_to_save']} (whole modules replace the base's)")
    if cfg.get("bias", "none") != "none" or cfg.get("lora_bias"):
        why.append("trained biases")
    if cfg.get("fan_in_fan_out"):
        why.append("fan_in_fan_out layers")
    if cfg.get("target_parameters"):
        why.append("target_parameters")
    init = cfg.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().split("_")[0] in ("pissa", "olora", "corda", "loftq", "eva"):
        why.append(f"init_lora_weights={init!r} (the base weights were changed at initialisation)")
    return why


def _scale(cfg: dict[str, Any], module: str, r: int) -> float:
    alpha = cfg.get("lora_alpha", 8)
    for key, a in (cfg.get("alpha_pattern") or {}).items():  # PEFT's get_pattern_key rule
        if re.match(rf"(.*\.)?({key})$", module):
            alpha = a
            break
    return alpha / (r ** 0.5) if cfg.get("use_rslora") else alpha / r


def read_adapter(path: str | Path) -> AdapterParent:
    folder = resolve_folder(path)
    missing = [f for f in (CONFIG, WEIGHTS) if not (folder / f).exists()]
    if missing:
        raise MergeError(f"{path}: missing {', '.join(missing)}")
    cfg = json.loads((folder / CONFIG).read_text())
    why = _refusals(cfg)
    if why:
        raise MergeError(f"{path}: cannot be merged: " + "; ".join(why))
    parts: dict[str, dict[str, torch.Tensor]] = {}
    for k, v in load_file(folder / WEIGHTS).items():
        m = _LORA_KEY.match(k)
        if m is None:
            raise MergeError(f"{path}: cannot be merged: tensor {k} is not a LoRA A/B matrix")
        parts.setdefault(m["module"], {})[m["ab"]] = v
    modules = {}
    for name, ab in parts.items():
        if set(ab) != {"A", "B"} or ab["A"].dim() != 2 or ab["B"].shape[1] != ab["A"].shape[0]:
            raise MergeError(f"{path}: module {name} has no matching A/B pair")
        module = name.removeprefix("base_model.model.")
        modules[name] = Factors(A=ab["A"], B=ab["B"], scale=_scale(cfg, module, ab["A"].shape[0]))
    return AdapterParent(path=folder, config=cfg, card=load_card(folder), modules=modules)


def write_adapter(folder: Path, parents: list[AdapterParent], factors: dict[str, tuple[torch.Tensor, torch.Tensor]],
                  card: dict[str, Any], dtype: torch.dtype) -> None:
    """PEFT files for `factors` {saved module name: (A, B)} at scale 1 (lora_alpha = r), + card.

    Modules with fewer columns than the widest are zero-padded: zero rows/columns add nothing."""
    r = max(a.shape[0] for a, _ in factors.values())
    tensors = {}
    for name, (a, b) in factors.items():
        pad = r - a.shape[0]
        if pad:
            a = torch.cat([a, a.new_zeros(pad, a.shape[1])], 0)
            b = torch.cat([b, b.new_zeros(b.shape[0], pad)], 1)
        tensors[f"{name}.lora_A.weight"] = a.to(dtype).contiguous().cpu()
        tensors[f"{name}.lora_B.weight"] = b.to(dtype).contiguous().cpu()
    cfg = dict(parents[0].config)
    targets: set[str] = set()
    for p in parents:
        t = p.config.get("target_modules")
        targets |= {name.rsplit(".", 1)[-1] for name in p.modules} if isinstance(t, str) or t is None else set(t)
    cfg.update(r=r, lora_alpha=r, use_rslora=False, use_dora=False, rank_pattern={}, alpha_pattern={},
               target_modules=sorted(targets), inference_mode=True)
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    write_card(folder, card)


# ------------------------------------------------------------------ models

def model_files(path: str | Path) -> list[Path]:
    return sorted(resolve_folder(path).glob("*.safetensors"))


def model_keys(path: str | Path) -> dict[str, tuple[Path, tuple[int, ...]]]:
    """{tensor name: (file, shape)} of a model folder, without reading the tensors."""
    out = {}
    for f in model_files(path):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                out[k] = (f, tuple(h.get_slice(k).get_shape()))
    return out


def iter_model_tensors(folders: list[Path]) -> Iterator[tuple[str, list[torch.Tensor]]]:
    """(name, [tensor of each folder]) one name at a time (memory: one tensor per folder)."""
    keys = [model_keys(f) for f in folders]
    names = list(keys[0])
    problems = []
    for f, k in zip(folders[1:], keys[1:]):
        if set(k) != set(keys[0]):
            diff = sorted(set(k) ^ set(keys[0]))
            problems.append(f"{f}: other tensor names than {folders[0]} (e.g. {diff[:3]})")
        else:
            bad = [n for n in names if k[n][1] != keys[0][n][1]]
            if bad:
                problems.append(f"{f}: other shapes than {folders[0]} (e.g. {bad[0]}: {k[bad[0]][1]} vs "
                                f"{keys[0][bad[0]][1]})")
    if problems:
        raise MergeError("cannot merge these models:\n  " + "\n  ".join(problems))
    handles: dict[Path, Any] = {}
    try:
        for name in names:
            ts = []
            for k in keys:
                f = k[name][0]
                if f not in handles:
                    handles[f] = safe_open(str(f), framework="pt")
                ts.append(handles[f].get_tensor(name))
            yield name, ts
    finally:
        handles.clear()


def copy_model_side_files(src: Path, dst: Path) -> None:
    for name in MODEL_SIDE_FILES:
        if (src / name).exists():
            shutil.copy2(src / name, dst / name)


def write_model(folder: Path, tensors: dict[str, torch.Tensor], src: Path, card: dict[str, Any]) -> None:
    save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    copy_model_side_files(src, folder)
    write_card(folder, card)
