"""Composition by weights, thinking-event metrics, and the metacog CLI."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from loralab import models
from loralab.adapters import apply_adapters
from loralab.compose import compose, parse_spec
from loralab.data.recipes.items import Item
from loralab.evaluate.metacog import MetacogConfig, evaluate_metacog, score_replies, summarize


_TINY = {}


def _fresh():
    """A private copy of the tiny model (PEFT wraps a model in place)."""
    if "m" not in _TINY:
        _TINY["m"] = models.load("tiny-random", device="cpu", dtype="float32")
    t = _TINY["m"]
    return dataclasses.replace(t, model=copy.deepcopy(t.model))


@pytest.fixture(scope="module")
def two_adapters(tmp_path_factory):
    """Two PEFT adapters on the tiny model with random (non-zero) A and B, ranks 4 and 2."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("compose")
    out = []
    for name, r, seed in (("a", 4, 1), ("b", 2, 2)):
        torch.manual_seed(seed)
        cfg = LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj", "down_proj"],
                         init_lora_weights=False, task_type="CAUSAL_LM")
        pm = get_peft_model(_fresh().model, cfg)
        pm.save_pretrained(root / name)
        out.append(str(root / name))
    return out


IDS = torch.tensor([[1, 5, 9, 200, 31, 7, 3000, 12]])


def _logits(loaded) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(input_ids=IDS).logits


def test_weight_zero_on_second_adapter_equals_the_single_adapter(two_adapters):
    a, b = two_adapters
    single = _logits(apply_adapters(_fresh(), [a]))
    composed = compose(_fresh(), [(a, 1.0), (b, 0.0)])
    assert torch.equal(_logits(composed), single)  # exact, not close
    both = _logits(compose(_fresh(), [(a, 1.0), (b, 1.0)]))
    assert (both - single).abs().max() > 1e-3  # the second adapter does act at weight 1
    base = _logits(_fresh())
    assert torch.equal(_logits(compose(_fresh(), [(a, 0.0), (b, 0.0)])), base)


def test_composed_layer_is_base_plus_weighted_updates(two_adapters):
    a, b = two_adapters
    m = compose(_fresh(), [(a, 0.7), (b, -0.4)]).model
    layer = m.base_model.model.model.layers[0].self_attn.q_proj
    x = torch.randn(3, layer.base_layer.in_features)
    with torch.no_grad():
        want = layer.base_layer(x)
        for name, w in zip(list(m.peft_config), (0.7, -0.4)):
            s = m.peft_config[name].lora_alpha / m.peft_config[name].r
            want = want + w * s * (x @ layer.lora_A[name].weight.T @ layer.lora_B[name].weight.T)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-6)


def test_parse_spec():
    assert parse_spec("runs/sport:0.5") == ("runs/sport", 0.5)
    assert parse_spec("runs/sport") == ("runs/sport", 1.0)
    assert parse_spec("C:/x/run") == ("C:/x/run", 1.0)


ITEMS = [Item(f"i{k}", "arith", "q", "7", "number") for k in range(4)]


def test_metrics_on_planted_replies():
    replies = ["Answer: 7",  # right first time
               "Answer: 8\nCheck: not 8.\nAnswer: 7",  # self-corrected
               "Answer: 7\nCheck: hmm.\nAnswer: 9",  # falsely corrected
               "3 + 4 = 8, let me start over. 3 + 4 = 7\nAnswer: 7"]  # restart, one committed answer
    s = score_replies("m", ITEMS, replies, [3, 10, 10, 12])
    assert s.values["first_right"].tolist() == [1, 0, 1, 1]
    assert s.values["final_right"].tolist() == [1, 1, 0, 1]
    assert s.values["self_corrected"].tolist() == [0, 1, 0, 0]
    assert s.values["false_corrected"].tolist() == [0, 0, 1, 0]
    assert s.values["restart"].tolist() == [0, 0, 0, 1]
    base = score_replies("base", ITEMS, ["Answer: 8"] * 4, [2] * 4)
    res = summarize({"base": base, "m": s}, resamples=200)
    d = res["vs_base"]["m"]["final_right"]
    assert d["mean"] == pytest.approx(0.75) and d["n"] == 4 and 0 <= d["p"] <= d["p_holm"] <= 1
    assert res["models"]["m"]["self_correction_given_wrong"]["mean"] == 1.0  # 1 corrected of 1 first-wrong
    assert res["models"]["m"]["false_correction_given_right"]["mean"] == pytest.approx(1 / 3)
    assert res["vs_base"]["m"]["length"]["mean"] == pytest.approx(np.mean([3, 10, 10, 12]) - 2)


def test_evaluate_metacog_end_to_end(two_adapters, tmp_path):
    a, b = two_adapters
    cfg = MetacogConfig(model="tiny-random", compositions={"a": [a], "a+b0": [f"{a}:1", f"{b}:0"]}, n=4,
                        sources=["arith", "logic"], max_new_tokens=8, out=str(tmp_path / "m"), progress=False,
                        device="cpu", dtype="float32", bootstrap=100)
    res = evaluate_metacog(cfg, loaded=_fresh())
    assert set(res["models"]) == {"base", "a", "a+b0"} and res["items"]["n"] == 4
    rows = [json.loads(x) for x in (tmp_path / "m" / "replies.jsonl").read_text().splitlines()]
    by = {m: [r["reply"] for r in rows if r["model"] == m] for m in ("a", "a+b0")}
    assert by["a"] == by["a+b0"]  # weight 0 on b: the same greedy replies as a alone
    assert json.loads((tmp_path / "m" / "metrics.json").read_text())["vs_base"]["a"]["final_right"]["n"] == 4


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    from loralab.cli import app

    r = CliRunner().invoke(app, ["metacog", "eval", "--adapter", str(tmp_path / "nope:0.5"), "--model", "tiny-random"])
    assert r.exit_code == 2 and "no such adapter folder" in r.output
    r = CliRunner().invoke(app, ["data", "recipe", "self-correction", "--out", str(tmp_path / "x"), "--ratios", "doubt=1"])
    assert r.exit_code == 2 and "unknown trace kind" in r.output
    r = CliRunner().invoke(app, ["data", "recipe", "epistemic", "--style", "vibes", "--out", str(tmp_path / "y")])
    assert r.exit_code == 2 and "unknown style" in r.output


@pytest.mark.slow
def test_recipe_and_metacog_eval_on_the_real_model(smol, tmp_path):
    """Smoke: the self-correction recipe with SmolLM2's own attempts, then its metrics on held-out items."""
    from loralab.data.recipes.selfcorrect import SelfCorrectionConfig, self_correction

    card = self_correction(tmp_path / "sc", SelfCorrectionConfig(n=5, attempts=1, max_new_tokens=48), loaded=smol)
    assert card["checks"]["balanced"] and card["recipe"]["model_attempts"]["per_item"] == 1
    res = evaluate_metacog(MetacogConfig(n=5, max_new_tokens=48, progress=False), loaded=smol)
    assert res["models"]["base"]["final_right"]["n"] == 5


def test_shipped_study_spec_validates_into_every_stage_config(tmp_path):
    from pathlib import Path

    from loralab.config import TrainConfig
    from loralab.data.recipes.epistemic import RecipeConfig
    from loralab.data.recipes.selfcorrect import SelfCorrectionConfig
    from loralab.study.metacog import load_spec

    s = load_spec(Path(__file__).parent.parent / "studies" / "metacog.yaml")
    SelfCorrectionConfig(**s.recipe)
    RecipeConfig(**s.anchor)
    MetacogConfig(**s.eval)
    TrainConfig(data=str(tmp_path), out=str(tmp_path), **s.train, **s.anchor_train, replay=str(tmp_path))


def _d(mean, p):
    return {"mean": mean, "lo": mean - 0.1, "hi": mean + 0.1, "n": 20, "p": p, "p_holm": p}


def test_findings_follow_the_numbers():
    from loralab.study.metacog import findings, report

    base = {k: _d(0.3, 1) for k in ("final_right", "self_corrected", "false_corrected", "restart")}
    base["length"] = _d(50, 1)

    def res(delta, p):
        vs = {"metacog": {k: _d(delta, p) for k in ("final_right", "self_corrected", "false_corrected")}}
        return {"metacog": {"models": {"base": base, "metacog": base}, "vs_base": vs,
                            "items": {"n": 20, "by_source": {"arith": 20}}},
                "forgetting": {"arc_easy": {"n": 20, "base": _d(0.5, 1), "sport": _d(0.4, 1), "sport_anchor": _d(0.5, 1),
                                            "delta_sport": _d(-0.1, 0.01), "delta_sport_anchor": _d(0.0, 0.9)}}}

    up, down = findings(res(0.2, 0.01)), findings(res(-0.2, 0.5))
    assert "raises it by +20.0" in up[0] and "not distinguishable" not in up[0]
    assert "lowers it by -20.0" in down[0] and "not distinguishable" in down[0]
    assert "the anchor forgets less" in up[-1]
    assert "| metacog |" in report(res(0.2, 0.01))
