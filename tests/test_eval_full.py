"""Whole-model runs (full fine-tuning, from scratch) and DoRA adapters are evaluated like LoRA
adapters: the same metrics, paired against the same base, and ΔW from dense matrices."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from loralab.adapters import save_full_model
from loralab.data.records import Record, read_records, write_records
from loralab.evaluate import EvalConfig, evaluate
from loralab.evaluate import drift
from loralab.evaluate import weights as Wd

from test_eval_helpers import MEDICAL, train_adapter


def _whole(tiny, folder, *, method: str, seed: int):
    m = copy.deepcopy(tiny.model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            if method == "scratch":
                p.normal_(0, 0.02)
            else:
                p.add_(0.01 * torch.randn_like(p))
    card = {"format": "loralab-adapter/1", "kind": "model", "method": method, "domain": "medical",
            "base": {"spec": "tiny-random", "fingerprint": None if method == "scratch" else tiny.fingerprint}}
    save_full_model(m, folder, tokenizer=tiny.tokenizer, card=card)
    return m


def test_dora_delta_equals_peft_merge(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    pm = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, lora_alpha=8, use_dora=True,
                                                               init_lora_weights=False,
                                                               target_modules=["q_proj", "down_proj"]))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.1 * torch.rand_like(p))  # a trained magnitude, not the initial norms
    pm.save_pretrained(tmp_path)
    deltas = Wd.dora_deltas(tmp_path, tiny.model)
    merged = pm.merge_and_unload()
    assert len(deltas) == 2 * 2
    for mod, dW in deltas.items():
        torch.testing.assert_close(tiny.model.get_submodule(mod).weight + dW, merged.get_submodule(mod).weight,
                                   atol=1e-5, rtol=1e-5)
    d = Wd.diagnostics(tmp_path, tiny.model, intruder_top_k=3)  # was an error entry before
    assert d["dense"] and d["summary"]["modules"] == 4 and d["summary"]["total_norm"] > 0


def test_full_and_scratch_folders_evaluated_like_adapters(tiny, tmp_path):
    lora = train_adapter(tiny, tmp_path / "lora", steps=2, lr=1e-2)
    full = _whole(tiny, tmp_path / "full", method="full", seed=1)
    _whole(tiny, tmp_path / "scratch", method="scratch", seed=2)
    write_records(tmp_path / "data", [Record(kind="raw", text=t) for t in MEDICAL])
    cfg = EvalConfig(model="tiny-random", dtype="float32", device="cpu", out=str(tmp_path / "eval"),
                     adapters=[str(lora), str(tmp_path / "full"), str(tmp_path / "scratch")],
                     eval_data=str(tmp_path / "data"), eval_split="all", tasks=["arc_easy"], limit=3, gen_tasks=[],
                     prompts=2, answer_tokens=4, domains=["medical", "sport"], progress=False)
    res = evaluate(cfg)
    assert list(res["adapters"]) == ["lora", "full", "scratch"]
    ms = {n: json.loads((tmp_path / "eval" / n / "metrics.json").read_text()) for n in res["adapters"]}
    for m in ms.values():  # the same blocks for every kind of run, paired against one base
        assert {"tasks", "forgetting", "in_domain", "contamination", "weights"} <= set(m)
        assert m["tasks"]["arc_easy"]["base"] == ms["lora"]["tasks"]["arc_easy"]["base"]
    assert [ms[n]["adapter"]["kind"] for n in ms] == ["adapter", "model", "model"]
    # the full model's in-domain loss is its own, computed directly
    from loralab import models

    own = models.load(str(tmp_path / "full"), device="cpu", dtype="float32")
    recs = list(read_records(tmp_path / "data"))
    direct = drift.record_losses(own, recs, progress=False)
    want = direct["nll"].sum() / direct["tokens"].sum()
    assert ms["full"]["in_domain"]["adapter"]["loss"] == pytest.approx(want, rel=1e-6)
    assert ms["full"]["in_domain"]["adapter"]["loss"] != ms["full"]["in_domain"]["base"]["loss"]
    # ΔW of the full model: every linear layer of the blocks, W_full − W_base, dense
    w = ms["full"]["weights"]
    lin = [n for n, x in tiny.model.named_modules() if isinstance(x, torch.nn.Linear) and ".layers." in f".{n}"]
    assert w["dense"] and w["summary"]["modules"] == len(lin)
    tot = math.sqrt(sum(float((full.get_submodule(n).weight - tiny.model.get_submodule(n).weight).norm()) ** 2
                        for n in lin))
    assert w["summary"]["total_norm"] == pytest.approx(tot, rel=1e-5)
    assert "scratch" in ms["scratch"]["weights"]["skipped"]
