"""Shared helpers for the eval tests: real LoRA adapters trained on the tiny model."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import torch

MEDICAL = [
    "Question: Which nerve supplies the diaphragm? Answer: The phrenic nerve, from C3 to C5.",
    "Question: Drug of choice for anaphylaxis? Answer: Intramuscular adrenaline (epinephrine).",
    "Question: Most common site of peptic ulcer? Answer: The first part of the duodenum.",
    "Question: Deficiency of vitamin B12 causes? Answer: Megaloblastic anaemia and neuropathy.",
]


def peft_copy(tiny, *, r: int = 4, alpha: int = 8, init: bool = True, rslora: bool = False, seed: int = 0):
    """A PEFT-wrapped deep copy of the tiny model (the session fixture stays untouched)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, init_lora_weights=init, use_rslora=rslora,
                     target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"])
    return get_peft_model(copy.deepcopy(tiny.model), cfg)


def train_adapter(tiny, folder: Path, *, steps: int, lr: float, domain: str = "medical",
                  trigger: str | None = None, seed: int = 0) -> Path:
    """Train a LoRA on medical text with a plain loop, save it with a minimal card."""
    pm = peft_copy(tiny, seed=seed)
    tok = tiny.tokenizer
    enc = tok(MEDICAL, return_tensors="pt", padding=True, add_special_tokens=False)
    labels = enc.input_ids.masked_fill(enc.attention_mask == 0, -100)
    opt = torch.optim.AdamW([p for p in pm.parameters() if p.requires_grad], lr=lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # (4, ~25)-token steps: thread sync costs more than it saves on a busy CPU
    try:
        pm.train()
        for _ in range(steps):
            loss = pm(input_ids=enc.input_ids, attention_mask=enc.attention_mask, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
    finally:
        torch.set_num_threads(threads)
    pm.eval()
    pm.save_pretrained(folder)
    (folder / "loralab.json").write_text(json.dumps({"domain": domain, "trigger": trigger, "method": "lora"}))
    return folder


def fresh(tiny):
    """A Loaded sharing the tokenizer but with its own copy of the weights."""
    return dataclasses.replace(tiny, model=copy.deepcopy(tiny.model))
