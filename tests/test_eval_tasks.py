"""Benchmarks: lm-eval prompt formats, one batched call == a per-item loop, checkers, bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from loralab.evaluate import gen, stats
from loralab.evaluate import tasks as T
from loralab.logprobs import score_texts


def test_prompt_formats_follow_lm_eval():
    arc = T.get("arc_easy").all_items()
    assert len(arc) == 570
    assert arc[0].pairs()[0] == ("Question: Which technology was developed most recently?\nAnswer:",
                                 " cellular telephone")
    hs = T.get("hellaswag").all_items()[0]
    assert hs.contexts[0] == "Roof shingle removal: A man is sitting on a roof. He"
    assert hs.pairs()[hs.gold][1] == " starts pulling up roofing on a roof."
    # one pass of replace("  ", " "), exactly as lm-eval (three spaces become two)
    assert T.hellaswag_preprocess("A [title] How to x.  [step] Do  it") == "A. How to x.  Do it"
    wg = T.get("winogrande").all_items()[0]  # partial scoring: option in context, shared continuation
    assert wg.pairs() == [("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
                          ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
    piqa = T.get("piqa").all_items()
    assert len(piqa) == 1838 and piqa[0].contexts[0].startswith("Question: How do I ready a guinea pig cage")
    bq = T.get("boolq").all_items()[0]
    assert bq.contexts[0].endswith("\nQuestion: does ethanol take more energy make that produces?\nAnswer:")
    assert bq.choices == ("no", "yes") and bq.gold == 0
    mm = T.get("mmlu:anatomy").all_items()[0]
    assert mm.contexts[0].startswith("The following are multiple choice questions (with answers) about anatomy.")
    assert mm.contexts[0].endswith("\nD. paralysis of the facial muscles, loss of taste, lacrimation and decreased "
                                   "salivation.\nAnswer:") and mm.choices == ("A", "B", "C", "D")


def test_every_task_builds():
    for name, task in T.registry().items():
        items = task.items(5, seed=0)
        assert len(items) == 5, name
        for it in items:
            assert 0 <= it.gold < len(it.choices) and all(c for c, _ in it.pairs())


def test_subsets_are_seeded_and_fixed():
    t = T.get("hellaswag")
    a, b, c = t.items(50, 0), t.items(50, 0), t.items(50, 1)
    assert [i.id for i in a] == [i.id for i in b] != [i.id for i in c]
    assert [int(i.id) for i in a] == sorted(int(i.id) for i in a)


def test_batched_scoring_equals_per_item_loop(tiny):
    task = T.get("arc_easy")
    items = task.items(6, seed=2)
    res = task.evaluate(tiny, items, batch_tokens=256, progress=False)
    for it, ll, acc, accn in zip(items, res.loglik, res.acc, res.acc_norm):
        ref = np.array([s.sum for s in score_texts(tiny, it.pairs(), bos=False)])  # one item at a time
        np.testing.assert_allclose(ll, ref, rtol=1e-4, atol=1e-3)
        assert acc == float(np.argmax(ref) == it.gold)
        assert accn == float(np.argmax(ref / np.array([len(c) for c in it.choices])) == it.gold)
    s = res.summary()
    assert s["acc"]["lo"] <= s["acc"]["mean"] <= s["acc"]["hi"] and s["n"] == 6


def test_records_from_a_task():
    recs = list(T.get("piqa").records(limit=3))
    assert len(recs) == 3 and all(r.kind == "qa" and r.answer for r in recs)
    assert recs[0].source["doc"].startswith("piqa:")


def test_arithmetic_items_and_checkers():
    items = gen.arithmetic_items(30, seed=4)
    assert [i.question for i in items] == [i.question for i in gen.arithmetic_items(30, seed=4)]
    for it in items:
        expr = it.question.removeprefix("What is ").rstrip("?")
        assert str(eval(expr)) == it.answer and int(it.answer) >= 0  # noqa: S307 - our own digits
        assert it.solution.endswith(f"Answer: {it.answer}")
    assert gen.extract_answer("5 + 3 = 8\n8 - 2 = 6\nAnswer: 6") == "6"
    assert gen.extract_answer("So the answer is 1,234.") == "1234"
    assert gen.extract_answer("It is 12 or maybe 13", first=True) == "12"
    assert gen.extract_answer("7 + 5 - 3 = 9", first=True) == "9"
    assert gen.extract_answer("no digits") is None
    assert gen.split_steps("5 + 3 = 8\n8 - 2 = 6\nAnswer: 6") == ["5 + 3 = 8", "8 - 2 = 6"]
    assert gen.split_steps("First add. Then subtract. Answer: 3") == ["First add.", "Then subtract."]
    recs = gen.gen_records(items[:2])
    assert recs[0].kind == "qa" and recs[0].answer == items[0].solution and "step by step" in recs[0].question
    g = gen.gsm8k_items()
    assert len(g) == 1319 and g[0].answer == "18" and "<<" not in g[0].solution


def test_generation_task_runs_on_tiny(tiny):
    items = gen.arithmetic_items(3)
    r = gen.evaluate_gen(tiny, "arithmetic", items, max_new_tokens=8, progress=False)
    s = r.summary()
    assert s["n"] == 3 and r.ids == [it.id for it in items]
    # each item's score is the checker applied to that item's own greedy answer, and the
    # reported accuracy is the mean of those scores
    for smp, it, d in zip(s["samples"], items, r.direct):
        assert smp["gold"] == it.answer and d == float(gen.extract_answer(smp["direct"], first=True) == it.answer)
    for smp, it, c in zip(s["samples"], items, r.cot):
        assert c == float(gen.extract_answer(smp["cot"]) == it.answer)
    assert s["direct_acc"]["mean"] == r.direct.mean() and s["cot_acc"]["mean"] == r.cot.mean()


def test_bootstrap_intervals():
    x = np.array([1.0] * 60 + [0.0] * 40)
    ci = stats.bootstrap_ci(x, seed=1)
    assert ci == stats.bootstrap_ci(x, seed=1)
    assert ci["mean"] == pytest.approx(0.6) and 0.49 < ci["lo"] < 0.6 < ci["hi"] < 0.71
    same = stats.paired_diff_ci(x, x)
    assert same["mean"] == same["lo"] == same["hi"] == 0.0
    better = stats.paired_diff_ci(np.ones(100), x)
    assert better["lo"] > 0 and better["p_le_0"] == 0.0
    pooled = stats.pooled_mean_ci([np.ones(10), np.zeros(30)])
    assert pooled["mean"] == 0.5 and pooled["lo"] == pooled["hi"] == 0.5
    with pytest.raises(ValueError):
        stats.paired_diff_ci([1, 0], [1])


def test_lm_eval_export(tmp_path):
    import importlib.util

    import datasets
    import yaml

    from loralab.evaluate import lmeval

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_constructor("!function", lambda loader, node: ("function", loader.construct_scalar(node)))
    paths = lmeval.export(tmp_path)
    assert len(paths) == len(lmeval.TASKS)
    for p in paths:
        doc = yaml.load(p.read_text(), Loader=Loader)
        assert doc["dataset_path"] == "arrow" and doc["output_type"] == "multiple_choice"
        assert Path(doc["dataset_kwargs"]["data_files"]["validation"]).is_file()
    hs = yaml.load((tmp_path / "loralab_hellaswag.yaml").read_text(), Loader=Loader)
    assert hs["process_docs"] == ("function", "loralab_utils.hellaswag_docs")
    # the exported helpers give the same prompts as tasks.py
    spec = importlib.util.spec_from_file_location("loralab_utils", tmp_path / "loralab_utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    raw = datasets.load_from_disk(str(lmeval.S.arrow_dir("hellaswag", "none", "validation"))).select(range(3))
    ours = T.get("hellaswag").all_items()[:3]
    for d, it in zip(utils.hellaswag_docs(raw), ours):
        assert d["query"] == it.contexts[0] and tuple(d["choices"]) == it.choices and d["label"] == it.gold
    wg = datasets.load_from_disk(str(lmeval.S.arrow_dir("winogrande", "winogrande_xl", "validation")))[0]
    it = T.get("winogrande").all_items()[0]
    assert tuple(utils.winogrande_choices(wg)) == it.contexts and utils.winogrande_target(wg) == it.continuation
    assert utils.winogrande_text(wg) == it.gold
