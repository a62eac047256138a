"""Adapter folders for the serving tests: PEFT LoRA on the tiny model with visible weights."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from loralab.adapters import write_card


def make_adapter(tiny, folder: Path, seed: int, *, rank: int = 4, alpha: float = 8.0, domain: str = "d",
                 targets="all-linear", **card) -> Path:
    """A PEFT LoRA adapter folder + loralab.json card with B drawn large enough to change answers."""
    torch.manual_seed(seed)
    m = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    m.save_pretrained(folder)
    write_card(folder, {"name": folder.name, "domain": domain, "base": {"spec": "tiny-random",
                                                                        "fingerprint": tiny.fingerprint}, **card})
    return folder


def peft_with(tiny, folders: dict[str, Path]):
    """The PEFT reference: the tiny base with every adapter loaded under its name."""
    from peft import PeftModel

    names = list(folders)
    m = PeftModel.from_pretrained(copy.deepcopy(tiny.model), str(folders[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        m.load_adapter(str(folders[n]), adapter_name=n)
    m.eval()
    return m
