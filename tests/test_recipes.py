"""Recipes: verifiers on planted traces, trace builders, and reconciled recipe folders."""

from __future__ import annotations

import json
import random
from fractions import Fraction

import pytest

from loralab.data.recipes import items as I
from loralab.data.recipes import traces as TR
from loralab.data.recipes.verify import (answers, equation_errors, evaluate_expr, final_answer, first_answer,
                                         verify_trace)


def arith(expr: str, gold: str) -> I.Item:
    return I.resolve(I.Item(f"arith:{expr}", "arith", f"What is {expr}?", gold, "number", expr=expr))


MC = I.Item("arc:x", "arc", "Which is a gas?\nA. ice\nB. steam\nC. rock", "B", "letter",
            ("Option B (steam) is the one that fits the question.",), ("ice", "steam", "rock"))


# ------------------------------------------------------------------ verifiers

def test_equations_checked_exactly():
    assert equation_errors("8 / 4 = 2\n16 + 2 = 19") == ["16 + 2 = 19"]
    assert equation_errors("12 * 5 = 12 * 10 / 2 = 120 / 2 = 60") == []
    assert equation_errors("12 * 5 = 12 * 10 / 2 = 120 / 2 = 61") == ["12 * 5 = 12 * 10 / 2 = 120 / 2 = 61"]
    assert equation_errors("1/3 = 0.33 and 2/3 = 0.67") == []  # rounded to the decimals shown
    assert equation_errors("1/3 = 0.4") == ["1/3 = 0.4"]
    assert equation_errors("$1.50 x 50 = $75, then 75 x 4 = 301") == ["75 * 4 = 301"]
    assert equation_errors("on 2020-10-12 the score was 3-1") == []  # no '=': nothing to check
    assert evaluate_expr("16 + 8 / 4") == 18 and evaluate_expr("7 / 2") == Fraction(7, 2)


def test_answers_first_and_final():
    t = "3 + 4 = 8\nAnswer: 8\nCheck: 3 + 4 = 7, not 8.\nAnswer: 7"
    assert answers(t, "number") == ["8", "7"] and first_answer(t, "number") == "8" and final_answer(t, "number") == "7"
    assert answers("Answer: 1,200.", "number") == ["1200"]
    assert answers("The answer is B. Answer: C", "letter") == ["B", "C"]
    assert answers("the answer is a whale", "letter") == []  # a lowercase word is not a choice
    assert final_answer("it is 12 then 15", "number") == "15" and first_answer("it is 12 then 15", "number") == "12"


GOOD = {
    "right_first": "22 / 2 = 11\n66 + 11 = 77\nAnswer: 77",
    "self_correction": "22 / 2 = 11\n66 + 11 = 78\nAnswer: 78\nCheck: 66 + 11 = 77, not 78. So 78 is wrong.\n"
                       "Correction:\n22 / 2 = 11\n66 + 11 = 77\nAnswer: 77",
    "restart": "22 / 2 = 12\nWait, 22 / 2 is not 12. Let me start over.\n22 / 2 = 11\n66 + 11 = 77\nAnswer: 77",
    "insight": "22 / 2 = 11\nShortcut: I notice 66 + 11 is easier as 66 + 11 = 70 + 7 = 77.\n66 + 11 = 77\nAnswer: 77",
}
BAD = [
    ("right_first", "22 / 2 = 11\n66 + 11 = 78\nAnswer: 78", "final_wrong"),
    ("right_first", "22 / 2 = 12\n66 + 11 = 77\nAnswer: 77", "equation_false"),
    ("right_first", GOOD["self_correction"], "not_first_time"),
    ("self_correction", GOOD["self_correction"].replace("not 78. So 78", "not that. So it"), "check_blind"),
    ("self_correction", GOOD["right_first"] + "\nCheck: fine.\nAnswer: 77", "first_right"),
    ("self_correction", GOOD["self_correction"].replace("\n66 + 11 = 77\nAnswer: 77", "\n66 + 11 = 76\nAnswer: 77"),
     "equation_false"),
    ("self_correction", GOOD["right_first"], "no_correction"),
    ("restart", GOOD["restart"].replace("Wait", "Answer: 78\nWait"), "restart_committed"),
    ("restart", GOOD["right_first"], "no_restart"),
    ("insight", GOOD["insight"].replace("70 + 7", "70 + 8"), "equation_false"),
    ("insight", GOOD["right_first"], "no_shortcut"),
]


@pytest.mark.parametrize("kind", list(GOOD))
def test_planted_right_traces_pass(kind):
    assert verify_trace(GOOD[kind], "77", kind, "number") is None


@pytest.mark.parametrize("kind,trace,reason", BAD)
def test_planted_wrong_traces_fail_with_their_reason(kind, trace, reason):
    why = verify_trace(trace, "77", kind, "number")
    assert why is not None and why.split(":")[0] == reason, why


def test_letter_traces():
    att = TR.synthetic_wrong(MC, random.Random(0))
    assert att.answer in "AC" and att.origin == "synthetic"
    assert verify_trace(TR.self_correction(MC, att), "B", "self_correction", "letter") is None
    assert verify_trace(TR.restart(MC, att), "B", "restart", "letter") is None
    assert verify_trace(TR.right_first(MC), "B", "right_first", "letter") is None
    assert verify_trace(TR.right_first(MC), "C", "right_first", "letter").startswith("final_wrong")


# ------------------------------------------------------------------ builders

def test_arithmetic_steps_follow_precedence():
    assert I.arithmetic_steps("16 + 8 / 4") == (["8 / 4 = 2", "16 + 2 = 18"], 18)
    assert I.arithmetic_steps("7 - 4 + 10") == (["7 - 4 = 3", "3 + 10 = 13"], 13)
    assert I.arithmetic_steps("29 - 4 * 8")[1] == -3
    with pytest.raises(I.UnusableItem):
        arith("16 + 8 / 4", "19")  # a packaged gold that disagrees is refused


@pytest.mark.parametrize("seed", range(6))
def test_synthetic_wrong_attempt_has_one_false_step_and_every_kind_verifies(seed):
    it = arith("66 + 22 / 2 - 5 * 9", "32")
    att = TR.synthetic_wrong(it, random.Random(seed))
    assert att.answer != it.gold and len(equation_errors(att.body)) == 1
    assert verify_trace(TR.self_correction(it, att), it.gold, "self_correction", "number") is None
    assert verify_trace(TR.restart(it, att), it.gold, "restart", "number") is None
    ins = TR.insight(it)  # 5 * 9 admits a shortcut
    assert "Shortcut:" in ins and verify_trace(ins, it.gold, "insight", "number") is None


def test_model_attempt_is_cut_before_its_answer():
    att = TR.cut_attempt("First 3 + 4 = 8.\nSo the answer is 8. Later: Answer: 7", "number")
    assert (att.answer, att.origin) == ("8", "model") and "answer" not in att.body.lower()
    assert TR.cut_attempt("no commitment here", "number") is None


def test_targets_sum_to_n():
    from loralab.data.recipes.selfcorrect import DEFAULT_RATIOS, SelfCorrectionConfig, parse_ratios, targets

    for n in (1, 7, 10, 33):
        assert sum(targets(SelfCorrectionConfig(ratios=DEFAULT_RATIOS).ratios, n).values()) == n
    assert parse_ratios("self-correction=1,right_first=3") == {"self_correction": 1.0, "right_first": 3.0}
    with pytest.raises(ValueError):
        SelfCorrectionConfig(ratios={"doubt": 1.0})


# ------------------------------------------------------------------ recipe folders

def _lines(p):
    return [json.loads(x) for x in p.read_text().splitlines() if x.strip()]


def test_self_correction_recipe_counts_reconcile(tiny, tmp_path):
    from loralab.data.recipes.selfcorrect import SelfCorrectionConfig, self_correction

    cfg = SelfCorrectionConfig(model="tiny-random", n=10, sources=["arith", "gsm8k", "logic", "arc", "sciq"],
                               attempts=1, max_new_tokens=8, batch_size=10)
    card = self_correction(tmp_path / "sc", cfg, loaded=tiny)
    recs, quar = _lines(tmp_path / "sc" / "records.jsonl"), _lines(tmp_path / "sc" / "quarantine.jsonl")
    s = card["reconciliation"]
    assert card["checks"] == {"records_match": True, "quarantine_match": True, "balanced": True}
    assert s["totals"]["read"] == 10 == len(recs) + len(quar) == s["totals"]["kept"] + s["totals"]["quarantined"]
    r = card["recipe"]
    assert sum(r["targets"].values()) == 10
    assert sum(r["by_kind"].values()) == len(recs) == card["records"]["total"]
    for kind, n in r["by_kind"].items():
        assert n == sum(rec["meta"]["trace_kind"] == kind for rec in recs)
        origins = {o: v for o, v in r["by_kind_origin"][kind].items() if o != "quarantined"}
        assert sum(origins.values()) == n
        for o, v in origins.items():
            assert v == sum(rec["meta"]["trace_kind"] == kind and rec["meta"]["origin"] == o for rec in recs)
    a = r["model_attempts"]
    assert a["right"] + a["wrong"] + a["no_answer"] == 10  # one attempt per item
    assert card["role"] == "metacognitive"
    # training on the folder without --role takes the role its card suggests
    import warnings

    from loralab.adapters import load_card
    from loralab.config import TrainConfig
    from loralab.train import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(model="tiny-random", data=str(tmp_path / "sc"), out=str(tmp_path / "run"), device="cpu",
                          dtype="float32", steps=1, rank=2, max_seq_len=128, eval_frac=0.2), progress=False)
    assert load_card(tmp_path / "run")["role"] == "metacognitive"
    for rec in recs:  # every kept trace passes its verifier again
        m = rec["meta"]
        assert verify_trace(rec["answer"], m["gold"], m["trace_kind"], m["answer_type"]) is None
        assert not I.is_eval(rec["source"]["doc"], I.HELDOUT_FRAC, I.SPLIT_SEED)  # never a held-out item


def test_quarantine_reconciles(tmp_path):
    from loralab.data.records import Record
    from loralab.data.recipes.write import write_recipe
    from loralab.data.stage import Reject

    rec = Record(kind="qa", question="q", answer=GOOD["right_first"], source={"path": "recipe:arith", "doc": "d1"},
                 meta={"trace_kind": "right_first", "origin": "reference"})
    outcomes = [({"path": "recipe:arith", "item": "d1", "kind": "right_first"}, "t", rec),
                ({"path": "recipe:arith", "item": "d2", "kind": "insight"}, "t", Reject("equation_false", "x")),
                ({"path": "recipe:logic", "item": "d3", "kind": "restart"}, "t", Reject("final_wrong", "y"))]
    card = write_recipe(tmp_path / "w", "recipe:test", outcomes, config={}, recipe={"name": "t"}, role="style")
    files = {f["path"]: f for f in card["reconciliation"]["files"]}
    assert (files["recipe:arith"]["read"], files["recipe:arith"]["kept"], files["recipe:arith"]["quarantined"]) == (2, 1, 1)
    assert card["quarantine"]["by_reason"] == {"equation_false": 1, "final_wrong": 1}
    assert card["recipe"]["by_kind"] == {"right_first": 1, "insight": 0, "restart": 0}
    assert [q["reason"] for q in _lines(tmp_path / "w" / "quarantine.jsonl")] == ["equation_false", "final_wrong"]


def test_epistemic_styles_share_items_and_anchor_is_verified(tmp_path):
    from loralab.data.recipes.epistemic import RecipeConfig, anchor, epistemic

    cfg = RecipeConfig(n=10, sources=["arith", "logic"])
    docs = {}
    for style in ("assumptions", "estimate"):
        card = epistemic(tmp_path / style, style, cfg)
        assert card["role"] == "epistemic" and card["checks"]["balanced"]
        recs = _lines(tmp_path / style / "records.jsonl")
        assert all(r["meta"]["style"] == style for r in recs)
        assert all(final_answer(r["answer"], r["meta"]["answer_type"]) == r["meta"]["gold"] for r in recs)
        docs[style] = {r["source"]["doc"] for r in recs} | {q["location"]["item"] for q in
                                                           _lines(tmp_path / style / "quarantine.jsonl")}
    assert docs["assumptions"] == docs["estimate"] and len(docs["estimate"]) == 10
    card = anchor(tmp_path / "anchor", cfg)
    recs = _lines(tmp_path / "anchor" / "records.jsonl")
    assert card["role"] is None and card["reconciliation"]["totals"]["read"] == 10
    assert all(verify_trace(r["answer"], r["meta"]["gold"], "right_first", r["meta"]["answer_type"]) is None
               for r in recs)
