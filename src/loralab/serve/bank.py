"""Resident adapters as stacked A/B tensors per linear layer (read by `fastlora.stacked_lora`).

For every adapted module name: A (S, r, in) and Bt (S, r, out) (B transposed) in the model's dtype, one slot
per adapter, slot 0 all zeros (the base), ranks zero-padded to the largest. The LoRA scaling
(alpha / r, or alpha / sqrt(r) with rsLoRA, per module with rank/alpha patterns) is folded
into B when loading, so a row's scale is just its strength. Adding an adapter writes one
slot (stacks grow or are re-padded only when a new adapter needs more room); removing one
zeroes its slot for reuse. The bank is changed only between batches (the engine's lock).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .registry import RegistryError

UNSUPPORTED = {
    "use_dora": "DoRA adapters are not served by the stacked path",
    "alora_invocation_tokens": "activated LoRA (alora) adapters are not served",
    "modules_to_save": "adapters with fully trained modules (modules_to_save) are not served",
    "lora_bias": "LoRA bias terms are not served",
}


@dataclass
class Slot:
    name: str
    index: int
    rank: int
    modules: int  # adapted layers
    notes: list[str]


def read_lora(folder: Path, model) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], int, list[str]]:
    """({module: (A (r, in), s * B (out, r))}, rank, notes) from a PEFT LoRA folder (safetensors only)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "adapter_config.json").read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise RegistryError(f"{folder.name}: a {cfg.get('peft_type')} adapter; only LoRA is served")
    bad = [why for k, why in UNSUPPORTED.items() if cfg.get(k)]
    if bad:
        raise RegistryError(f"{folder.name}: " + "; ".join(bad))
    weights = load_file(str(folder / "adapter_model.safetensors"), device="cpu")
    modules = dict(model.named_modules())
    r0, a0 = int(cfg.get("r", 8)), float(cfg.get("lora_alpha", 8))
    rank_pat, alpha_pat = cfg.get("rank_pattern") or {}, cfg.get("alpha_pattern") or {}
    notes, out, problems = [], {}, []
    if cfg.get("trainable_token_indices"):
        notes.append("trained token rows (e.g. a trigger token) are not served; its LoRA layers are")
    for key, A in weights.items():
        if ".lora_A." not in key:
            continue
        name = key.split(".lora_A.")[0].removeprefix("base_model.model.")
        B = weights.get(key.replace(".lora_A.", ".lora_B."))
        mod = modules.get(name)
        if B is None or not isinstance(mod, torch.nn.Linear):
            problems.append(f"{name}: no matching linear layer in the base" if B is not None else f"{name}: no lora_B")
            continue
        if tuple(A.shape) != (A.shape[0], mod.in_features) or tuple(B.shape) != (mod.out_features, A.shape[0]):
            problems.append(f"{name}: shapes A {tuple(A.shape)}, B {tuple(B.shape)} do not fit the base layer "
                            f"({mod.out_features} x {mod.in_features})")
            continue
        r, alpha = r0, a0
        if rank_pat or alpha_pat:
            from peft.utils.other import get_pattern_key

            r = int(rank_pat.get(get_pattern_key(list(rank_pat), name), r0)) if rank_pat else r0
            alpha = float(alpha_pat.get(get_pattern_key(list(alpha_pat), name), a0)) if alpha_pat else a0
        s = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
        out[name] = (A.float(), B.float() * s)
    if problems:
        raise RegistryError(f"{folder.name}: " + "; ".join(problems[:5]) +
                            (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    if not out:
        raise RegistryError(f"{folder.name}: no LoRA weights found")
    return out, max(a.shape[0] for a, _ in out.values()), notes


class AdapterBank:
    """Stacks of resident adapters for one base model; `.stacks` and `.rows` feed stacked_lora."""

    def rows_for(self, rows: list[list[tuple[int, float]]]):
        """The fastlora.RowAdapters of a batch whose rows use [(slot, strength)]."""
        from ..fastlora import RowAdapters

        return RowAdapters.of(rows, device=self.device, n_slots=self.capacity, rank=self.rank)

    def __init__(self, model):
        self.model = model
        p = next(model.parameters())
        # the factors stay fp32 whatever the base's dtype (fastlora.stacked_lora_linear casts the
        # update once): small low-precision GEMMs cost CPUs far more than their size
        self.device, self.dtype, self.model_dtype = p.device, torch.float32, p.dtype
        self.stacks: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self.rows = None  # fastlora.RowAdapters of the batch being run
        self.slots: dict[str, Slot] = {}
        self.capacity = 1  # slots allocated in every stack (slot 0 = base)
        self.rank = 0
        self._free: list[int] = []
        self._next = 1  # the next never-used slot index
        self.version = 0  # bumps whenever any stacked weight changes (derived copies rebuild on it)

    def _grow(self, capacity: int, rank: int) -> None:
        """Re-allocate every stack to `capacity` slots of rank `rank` (contents kept)."""
        for name, (A, B) in self.stacks.items():
            A2 = torch.zeros((capacity, rank, A.shape[2]), dtype=self.dtype, device=self.device)
            B2 = torch.zeros((capacity, rank, B.shape[2]), dtype=self.dtype, device=self.device)
            A2[: A.shape[0], : A.shape[1]] = A
            B2[: B.shape[0], : B.shape[1]] = B
            self.stacks[name] = (A2, B2)
        self.capacity, self.rank = capacity, rank
        self.version += 1

    def add(self, name: str, layers: dict[str, tuple[torch.Tensor, torch.Tensor]], rank: int,
            notes: list[str] | None = None) -> Slot:
        """Put an adapter (from `read_lora`) into a slot; replaces one of the same name."""
        if name in self.slots:
            self.remove(name)
        if self._free:
            index = self._free.pop()
        else:
            index, self._next = self._next, self._next + 1
        if index >= self.capacity or rank > self.rank:
            # exact growth: the dense mixed path multiplies by every allocated slot
            self._grow(max(self.capacity, index + 1), max(self.rank, rank))
        for mod, (A, B) in layers.items():
            if mod not in self.stacks:
                self.stacks[mod] = (torch.zeros((self.capacity, self.rank, A.shape[1]), dtype=self.dtype,
                                                device=self.device),
                                    torch.zeros((self.capacity, self.rank, B.shape[0]), dtype=self.dtype,
                                                device=self.device))
            SA, SB = self.stacks[mod]
            SA[index, : A.shape[0]] = A.to(self.dtype)
            SB[index, : B.shape[1]] = B.t().to(self.dtype)
        self.version += 1
        slot = Slot(name=name, index=index, rank=rank, modules=len(layers), notes=list(notes or []))
        self.slots[name] = slot
        return slot

    def detach(self, name: str) -> Slot:
        """Take a name off its slot but keep the slot's weights: rows that already hold its index
        (a request admitted before an unload or a reload of that name) finish on them. The
        caller frees the slot (`free`) once no row uses it; until then no new adapter gets it."""
        return self.slots.pop(name)

    def free(self, slot: Slot) -> None:
        """Zero a detached slot and make it reusable."""
        for SA, SB in self.stacks.values():
            SA[slot.index].zero_()
            SB[slot.index].zero_()
        self.version += 1
        self._free.append(slot.index)

    def remove(self, name: str) -> None:
        self.free(self.detach(name))
