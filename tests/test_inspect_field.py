"""Inspector pure functions: the field's numbers are the log-prob engine's, strengths and
compositions equal merged weights, corrections make a records folder `loralab train` reads."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import numpy as np
import pytest
import torch

from inspect_support import make_adapter, train_one_step
from loralab.adapters import apply_adapters
from loralab.errors import UserError
from loralab.logprobs import token_divergence, token_logprobs
from loralab.serve.inspect import corrections as corr
from loralab.serve.inspect import field as fld
from loralab.serve.inspect import runs as runsmod

PROMPT, TEXT = "Who won the game on Sunday?", "The Bears won it by three points."


@pytest.fixture(scope="module")
def setup(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect")
    a = make_adapter(tiny, root / "a", seed=1)
    b = make_adapter(tiny, root / "b", seed=2)
    ins = fld.Inspector.load(tiny, {"a": a, "b": b})
    return {"ins": ins, "a": a, "b": b, "root": root, "tiny": tiny}


def _alone(tiny, folder):
    """The adapter loaded on its own fresh copy of the base (independent of the inspector)."""
    return apply_adapters(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)), [folder])


def _merged(tiny, folders, weights):
    """Reference: a plain copy of the base with W + Σ w_i (alpha_i / r_i) B_i A_i written into it."""
    ref = copy.deepcopy(tiny.model)
    both = apply_adapters(dataclasses.replace(tiny, model=copy.deepcopy(tiny.model)), folders, ["x0", "x1"][:len(folders)])
    mods = dict(ref.named_modules())
    with torch.no_grad():
        for name, m in both.model.named_modules():
            if hasattr(m, "lora_A") and "x0" in m.lora_A:
                target = mods[name.removeprefix("base_model.model.")]
                for key, w in zip(("x0", "x1"), weights):
                    s = m.lora_alpha[key] / m.r[key]
                    target.weight += w * s * (m.lora_B[key].weight @ m.lora_A[key].weight)
    return ref


def test_field_equals_the_engine(setup):
    ins, tiny = setup["ins"], setup["tiny"]
    f = fld.token_field(ins, PROMPT, TEXT, {"a": 1.0})
    ctx, cont = fld.encode(ins, PROMPT, TEXT, chat=True)
    assert f["ids"] == cont and "".join(f["tokens"]) == TEXT
    base = token_logprobs(tiny.model, [(ctx, cont)])[0].logprobs
    ad_model = _alone(tiny, setup["a"]).model
    ad = token_logprobs(ad_model, [(ctx, cont)])[0].logprobs
    kl = token_divergence(tiny.model, ad_model, [(ctx, cont)])[0]
    np.testing.assert_allclose(f["base_logprob"], base, atol=1e-5)
    np.testing.assert_allclose(f["adapter_logprob"], ad, atol=1e-5)
    np.testing.assert_allclose(f["kl"], kl.kl, atol=1e-5)
    np.testing.assert_allclose(f["js"], kl.js, atol=1e-5)
    np.testing.assert_allclose(f["logprob_diff"], np.array(f["adapter_logprob"]) - np.array(f["base_logprob"]), atol=1e-12)
    np.testing.assert_allclose(f["surprisal"], -np.array(f["adapter_logprob"]), atol=1e-12)
    assert max(f["kl"]) > 1e-3  # the adapter really moves the field
    assert f["disagree"][0] == int(np.argmax(f["kl"]))


def test_strength_zero_is_the_base_and_strength_scales_the_update(setup):
    ins, tiny = setup["ins"], setup["tiny"]
    ctx, cont = fld.encode(ins, PROMPT, TEXT, chat=True)
    f0 = fld.token_field(ins, PROMPT, TEXT, {"a": 0.0, "b": 0.0})
    assert max(abs(x) for x in f0["logprob_diff"]) < 1e-6 and max(f0["kl"]) < 1e-6
    for weights in ({"a": 0.5}, {"a": 0.7, "b": 1.6}):
        f = fld.token_field(ins, PROMPT, TEXT, weights)
        folders = [setup[k] for k in weights]
        ref = token_logprobs(_merged(tiny, folders, list(weights.values())), [(ctx, cont)])[0].logprobs
        np.testing.assert_allclose(f["adapter_logprob"], ref, atol=1e-4)
    # strengths are restored after each call: strength 1 again equals the adapter alone
    f1 = fld.token_field(ins, PROMPT, TEXT, {"a": 1.0})
    ref = token_logprobs(_alone(tiny, setup["a"]).model, [(ctx, cont)])[0].logprobs
    np.testing.assert_allclose(f1["adapter_logprob"], ref, atol=1e-5)


def test_position_detail_matches_engine_topk(setup):
    ins, tiny = setup["ins"], setup["tiny"]
    d = fld.position_detail(ins, PROMPT, TEXT, {"a": 1.0, "b": 0.5}, 2, k=5)
    assert [s["name"] for s in d["sides"]] == ["base", "a", "b", "mix"]
    ctx, cont = fld.encode(ins, PROMPT, TEXT, chat=True)
    ref = token_logprobs(_alone(tiny, setup["a"]).model, [(ctx, cont)], top_k=5)[0]
    side = d["sides"][1]
    assert side["top_ids"] == ref.topk_ids[2].tolist()
    np.testing.assert_allclose(side["top_logprobs"], ref.topk_logprobs[2], atol=1e-5)
    # each side's candidate log-probs contain its own top-k and the actual token's log-prob
    f = fld.token_field(ins, PROMPT, TEXT, {"a": 1.0})
    j = d["candidates"].index(d["actual_id"])
    assert math.isclose(side["logprobs"][j], f["adapter_logprob"][2], abs_tol=1e-5)
    for s in d["sides"]:
        for i, lp in zip(s["top_ids"], s["top_logprobs"]):
            assert math.isclose(s["logprobs"][d["candidates"].index(i)], lp, abs_tol=1e-5)
    assert d["prefix_text"] + d["rest_text"] == TEXT
    spreads = [t["spread"] for t in d["disagree"]]
    assert spreads == sorted(spreads, reverse=True) and spreads[0] > 0


def test_one_value_per_token_and_one_forward_per_side(setup):
    """A token's log-prob is the same number in the field, the top-k list and the candidates (all
    read from one distribution); a mix whose other adapters are at 0 is that adapter exactly; a
    repeated request runs no forward, a click with two adapters at most one per side."""
    ins = setup["ins"]
    text = "A fresh continuation for the cache test."
    f = fld.token_field(ins, PROMPT, text, {"a": 1.0})
    before = ins.passes
    d = fld.position_detail(ins, PROMPT, text, {"a": 1.0}, 3, k=5)
    assert ins.passes == before  # base and "a" were computed by the field request
    side = d["sides"][1]
    j = d["candidates"].index(d["actual_id"])
    assert side["logprobs"][j] == f["adapter_logprob"][3]  # the same float, not merely close
    for s in d["sides"]:
        for i, lp in zip(s["top_ids"], s["top_logprobs"]):
            assert s["logprobs"][d["candidates"].index(i)] == lp
    alone = fld.token_field(ins, PROMPT, text, {"a": 1.0})
    with_zero = fld.token_field(ins, PROMPT, text, {"a": 1.0, "b": 0.0})
    assert with_zero["adapter_logprob"] == alone["adapter_logprob"] and with_zero["kl"] == alone["kl"]
    assert ins.passes == before  # both answered from the cache
    d2 = fld.position_detail(ins, PROMPT, text, {"a": 1.0, "b": 0.5}, 1, k=5)
    assert ins.passes == before + 2  # "b" alone and the mix: base and "a" are cached
    mix_side = [s for s in d2["sides"] if s["name"] == "mix"][0]
    f_mix = fld.token_field(ins, PROMPT, text, {"a": 1.0, "b": 0.5})
    assert ins.passes == before + 2
    assert mix_side["logprobs"][d2["candidates"].index(d2["actual_id"])] == f_mix["adapter_logprob"][1]
    assert f["precision"]["dtype"] == "float32" and d["precision"]["dtype"] == "float32"


def test_prefetch_computes_the_sides_a_click_shows(setup):
    ins = setup["ins"]
    text = "Another continuation, for the prefetch."
    w = {"a": 0.9, "b": 0.4}
    fld.token_field(ins, PROMPT, text, w)
    t = fld.prefetch_sides(ins, PROMPT, text, w)
    t.join(timeout=60)
    before = ins.passes
    d = fld.position_detail(ins, PROMPT, text, w, 2)
    assert ins.passes == before and [s["name"] for s in d["sides"]] == ["base", "a", "b", "mix"]
    assert fld.prefetch_sides(ins, PROMPT, text, {"a": 1.0}) is None  # one adapter: the mix is that side


def test_bias_side_is_the_mix_renormalised_with_the_bias(setup):
    ins = setup["ins"]
    ctx, cont = fld.encode(ins, PROMPT, TEXT, chat=True)
    bias = {int(cont[2]): -5.0, 42: 3.0}
    d = fld.position_detail(ins, PROMPT, TEXT, {"a": 1.0}, 2, k=5, bias=bias)
    row = ins.distribution(ctx, cont, {"a": 1.0})[2].double()
    vec = torch.zeros_like(row)
    for t, v in bias.items():
        vec[t] = v
    want = torch.log_softmax(row + vec, -1)
    got = d["sides"][-1]
    assert got["name"] == "bias"
    np.testing.assert_allclose(got["logprobs"], want[torch.tensor(d["candidates"])].numpy(), atol=1e-5)


@pytest.mark.parametrize("weights,prompt,message", [
    ({"nope": 1.0}, PROMPT, "unknown adapter 'nope'"),
    ({"a": 2.5}, PROMPT, "between 0 and 2"),
    ({"a": -0.1}, PROMPT, "between 0 and 2"),
    ({"a": float("nan")}, PROMPT, "between 0 and 2"),
    ({"a": 1.0}, "   ", "the prompt is empty"),
    ({"a": 1.0}, "x" * 100_000, "100,000 characters"),
])
def test_bad_input_is_a_user_error(setup, weights, prompt, message):
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        fld.token_field(setup["ins"], prompt, TEXT, weights)


def test_generations_share_the_seed_and_logit_bias_steers(setup):
    ins = setup["ins"]
    g1 = fld.side_by_side(ins, PROMPT, {"a": 1.0}, seed=7, temperature=1.0, max_new_tokens=6)
    g2 = fld.side_by_side(ins, PROMPT, {"a": 1.0}, seed=7, temperature=1.0, max_new_tokens=6)
    assert g1 == g2 and g1["generations"]["base"]["ids"] != g1["generations"]["adapter"]["ids"]
    tok = ins.tokenizer
    bias = fld.bias_from_corrections(tok, [{"chosen": " Bears", "replaced_id": 42}], strength=100.0)
    bears = tok.encode(" Bears", add_special_tokens=False)[0]
    assert bias == {bears: 100.0, 42: -100.0}
    g = fld.side_by_side(ins, PROMPT, {"a": 1.0}, max_new_tokens=4, bias=bias)
    assert g["generations"]["bias"]["ids"] == [bears] * 4
    assert g["generations"]["adapter"]["ids"] != [bears] * 4
    d = fld.position_detail(ins, PROMPT, TEXT, {"a": 1.0}, 0, k=3, bias=bias)
    assert d["sides"][-1]["name"] == "bias" and d["sides"][-1]["top_ids"][0] == bears


def test_corrections_folder_reconciles_and_trains(setup, tmp_path):
    root = tmp_path / "datasets"
    good = {"prompt": PROMPT, "prefix": "The", "chosen": " Lions", "rejected": " Bears won it.", "position": 1,
            "replaced_id": 42802, "adapters": {"a": 1.0}}
    s1 = corr.save(root, "fix", corr.parse(good))
    s2 = corr.save(root, "fix", corr.parse({**good, "chosen": " Bears"}))  # what the model wrote: no change
    s3 = corr.save(root, "fix", corr.parse({"prompt": "Once upon a time", "chat": False, "prefix": " there",
                                            "chosen": " lived a king."}))
    assert (s1["records"], s2["quarantine_reason"], s3["records"], s3["quarantined"]) == (1, "no_change", 2, 1)
    d = root / "fix"
    recs = [json.loads(x) for x in (d / "records.jsonl").read_text().splitlines()]
    assert recs[0]["kind"] == "instruction" and recs[0]["output"] == "The Lions" and recs[0]["id"] == s1["record_id"]
    assert recs[1] == {**recs[1], "kind": "raw", "text": "Once upon a time there lived a king."}
    pairs = [json.loads(x) for x in (d / "preferences.jsonl").read_text().splitlines()]
    assert pairs == [{"id": s1["record_id"], "prompt": PROMPT, "chosen": "The Lions", "rejected": "The Bears won it.",
                      "chat": True, "source": recs[0]["source"]}]
    q = [json.loads(x) for x in (d / "quarantine.jsonl").read_text().splitlines()]
    assert [x["reason"] for x in q] == ["no_change"] and q[0]["location"]["line"] == 2
    card = json.loads((d / "data_card.json").read_text())
    t = card["reconciliation"]["totals"]
    assert (t["read"], t["kept"], t["quarantined"], t["balanced"]) == (3, 2, 1, True)
    assert all(card["checks"].values())
    assert [c.chosen for c in corr.load(root, "fix")] == [" Lions", " lived a king."]
    for bad, msg in (({**good, "chosen": ""}, "pick a token"), ({**good, "prompt": " "}, "prompt is empty"),
                     ({**good, "extra": 1}, "extra")):
        with pytest.raises(UserError, match=msg):
            corr.parse(bad)
    with pytest.raises(UserError, match="dataset name"):
        corr.save(root, "../x", corr.parse(good))
    # `loralab train` takes the folder as it is
    out = tmp_path / "run"
    train_one_step(d, out)
    assert (out / "adapter" / "adapter_model.safetensors").exists()
    listing = runsmod.scan(tmp_path)
    assert [x["adapter"] for x in listing["runs"]] == ["run/adapter"]
    with pytest.raises(UserError, match="outside"):
        runsmod.resolve_inside(tmp_path, "../etc/passwd")


def test_corrections_hold_whole_answers_and_undo_reconciles(setup, tmp_path):
    """A correction continued from the corrected prefix: the record and the preference pair hold
    whole answers; the continuation is the mix's greedy answer from that prefix; the list shows
    every correction with its outcome and undo removes the last with counts that still reconcile."""
    ins = setup["ins"]
    got = fld.continue_from(ins, PROMPT, "The Lions", {"a": 1.0}, max_new_tokens=6)
    ctx = fld.prompt_ids(ins, PROMPT, True)
    with fld.mixed(ins, {"a": 1.0}):
        want = fld.generate_ids(ins.loaded, [ctx + ins.tokenizer.encode("The Lions", add_special_tokens=False)],
                                max_new_tokens=6)[0]
    assert got["ids"] == want and got["rest"] == ins.tokenizer.decode(want, skip_special_tokens=True)
    with pytest.raises(UserError, match="nothing to continue"):
        fld.continue_from(ins, PROMPT, "", {"a": 1.0})
    root = tmp_path / "datasets"
    good = {"prompt": PROMPT, "prefix": "The", "chosen": " Lions", "rest": " won it by a field goal.",
            "rejected": " Bears won it.", "position": 1, "adapters": {"a": 1.0}}
    s1 = corr.save(root, "whole", corr.parse(good))
    same = {**good, "chosen": " Bears", "rest": " won it."}  # the whole answer is what the model wrote
    s2 = corr.save(root, "whole", corr.parse(same))
    assert (s1["records"], s2["quarantine_reason"], s2["corrections"]) == (1, "no_change", 2)
    d = root / "whole"
    rec = json.loads((d / "records.jsonl").read_text().splitlines()[0])
    assert rec["output"] == "The Lions won it by a field goal."
    pair = json.loads((d / "preferences.jsonl").read_text().splitlines()[0])
    assert (pair["chosen"], pair["rejected"]) == ("The Lions won it by a field goal.", "The Bears won it.")
    listed = corr.listing(root, "whole")["corrections"]
    assert [(c["answer"], c["record_id"], c["quarantine_reason"]) for c in listed] == [
        ("The Lions won it by a field goal.", s1["record_id"], None), ("The Bears won it.", None, "no_change")]
    u = corr.undo(root, "whole")
    assert (u["records"], u["quarantined"], u["corrections"]) == (1, 0, 1) and u["undone"]["chosen"] == " Bears"
    t = json.loads((d / "data_card.json").read_text())["reconciliation"]["totals"]
    assert (t["read"], t["kept"], t["quarantined"], t["balanced"]) == (1, 1, 0, True)
    corr.undo(root, "whole")
    assert not (d / "records.jsonl").read_text()
    with pytest.raises(UserError, match="no correction to undo"):
        corr.undo(root, "whole")


def test_dataset_view_ranks_records_by_divergence(setup):
    from loralab.data.records import Record

    ins, tiny = setup["ins"], setup["tiny"]
    recs = [Record.model_validate({"kind": "instruction", "instruction": PROMPT, "output": TEXT}),
            Record.model_validate({"kind": "qa", "question": "Who kicked the goal?", "answer": "Kevin Brown did."}),
            Record.model_validate({"kind": "raw", "text": "Too short to split."}),
            Record.model_validate({"kind": "raw", "text": "The match began in rain and ended in sunshine after the "
                                                          "home side came back from two goals down."})]
    v = fld.dataset_view(ins, recs, {"a": 1.0}, limit=10)
    assert (v["read"], v["ranked"], v["skipped"]) == (4, 3, {"no_answer": 1, "too_long": 0})
    kls = [r["mean_kl"] for r in v["rows"]]
    assert kls == sorted(kls, reverse=True) and kls[-1] > 0
    first = next(r for r in v["rows"] if r["index"] == 0)
    f = fld.token_field(ins, first["prompt"], first["continuation"], {"a": 1.0}, chat=first["chat"])
    assert math.isclose(first["mean_kl"], float(np.mean(f["kl"])), abs_tol=1e-5)
    assert math.isclose(first["delta_logprob"], float(np.mean(f["logprob_diff"])), abs_tol=1e-5)
    raw = next(r for r in v["rows"] if r["index"] == 3)
    assert not raw["chat"] and raw["prompt"] + raw["continuation"] == recs[3].text
    with pytest.raises(UserError, match="strength above 0"):
        fld.dataset_view(ins, recs, {"a": 0.0})


def test_runs_scan_reads_a_study_folder(tmp_path, setup):
    import shutil

    run = tmp_path / "quick" / "runs" / "abc123"
    shutil.copytree(setup["a"], run / "train" / "adapter")
    (run / "config.json").write_text(json.dumps({"id": "abc123", "labels": {"variant": "qa"}}))
    (run / "status.json").write_text(json.dumps({"state": "done"}))
    (run / "metrics.json").write_text(json.dumps({"in_domain": {"gain": 0.5, "ci": [0.1, 0.9]}, "ok": True}))
    (tmp_path / "quick" / "study.json").write_text(json.dumps({"spec": {"description": "a test study"}}))
    (tmp_path / "quick" / "report.html").write_text("<html></html>")
    s = runsmod.scan(tmp_path)
    st = s["studies"][0]
    assert (st["name"], st["description"], st["report"]) == ("quick", "a test study", "quick/report.html")
    r = st["runs"][0]
    assert r["adapter"] == "quick/runs/abc123/train/adapter" and r["metrics"] == {"in_domain.gain": 0.5}
    assert r["labels"] == {"variant": "qa"} and r["domain"] == "test"
    assert r["name"] == "quick-qa"  # the study and the run's labels, not its hash


@pytest.mark.slow
def test_field_on_the_embedded_model(smol, tmp_path):
    ad = make_adapter(smol, tmp_path / "smol-a", seed=3, gain=1.0)
    ins = fld.Inspector.load(smol, {"a": ad})
    f = fld.token_field(ins, "What is the capital of France?", "The capital of France is Paris.", {"a": 1.0})
    assert "".join(f["tokens"]) == "The capital of France is Paris."
    ctx, cont = fld.encode(ins, "What is the capital of France?", "The capital of France is Paris.", chat=True)
    fp32 = copy.deepcopy(smol.model).float()  # the inspector computes in fp32 whatever the served dtype
    np.testing.assert_allclose(f["base_logprob"], token_logprobs(fp32, [(ctx, cont)])[0].logprobs, atol=1e-5)
    assert f["precision"]["dtype"] == "float32"
    assert f["base_logprob"][-2] > math.log(0.5)  # " Paris" is likely under the real base
    f0 = fld.token_field(ins, "What is the capital of France?", "The capital of France is Paris.", {"a": 0.0})
    assert max(f0["kl"]) < 1e-6
