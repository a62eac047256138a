"""Paired comparison of two routers on the same written prompts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from loralab.evaluate.routing import paired_difference
from loralab.evaluate.stats import paired_diff_ci

ROWS = ([{"id": f"m{i}", "domain": "medical"} for i in range(6)]
        + [{"id": f"g{i}", "domain": "general"} for i in range(4)])
A = {"m0": "medical", "m1": "medical", "m2": "science", "m3": "base", "m4": "medical", "m5": "science",
     "g0": "base", "g1": "fiction", "g2": "fiction", "g3": "base"}
B = {"m0": "medical", "m1": "science", "m2": "medical", "m3": "medical", "m4": "medical", "m5": "science",
     "g0": "base", "g1": "base", "g2": "fiction", "g3": "base", "x9": "base"}


def test_paired_difference_counts_and_equals_the_paired_bootstrap():
    d = paired_difference(ROWS, A, B, seed=3)
    acc, fa = d["accuracy"], d["false_activation"]
    # accuracy: A right on m0 m1 m4 (3/6), B on m0 m2 m3 m4 (4/6); only A m1, only B m2 m3
    assert acc["mean"] == pytest.approx(1 / 6) and acc["n"] == 6 and (acc["only_a"], acc["only_b"]) == (1, 2)
    ref = paired_diff_ci([1, 0, 1, 1, 1, 0], [1, 1, 0, 0, 1, 0], seed=3)
    assert (acc["lo"], acc["hi"], acc["p"]) == (ref["lo"], ref["hi"], ref["p"])
    assert acc["a"]["mean"] == pytest.approx(3 / 6) and acc["b"]["mean"] == pytest.approx(4 / 6)
    # false activation: A fired on g1 g2 (2/4), B on g2 (1/4); a prompt only B routed (x9) is left out
    assert fa["mean"] == pytest.approx(-0.25) and fa["n"] == 4 and (fa["only_a"], fa["only_b"]) == (1, 0)
    same = paired_difference(ROWS, A, A)
    assert same["accuracy"]["mean"] == 0 and same["accuracy"]["lo"] == same["accuracy"]["hi"] == 0


def _report(routes):
    return {"written": {"file": "p.jsonl", "n_prompts": 10, "n_report": len(routes), "seed": 0, "tune_share": 0.5,
                        "as_built": {"routes": routes, "wrong_domain_confident": [{}] * (routes is A)}}}


def test_compare_script_prints_the_paired_figures_and_refuses_other_splits(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({**r, "text": r["id"], "style": "q", "lang": "en"}) + "\n" for r in ROWS))
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps(_report(A)))
    b.write_text(json.dumps(_report({k: v for k, v in B.items() if k != "x9"})))  # a report routes its file only
    script = Path(__file__).parents[1] / "benchmarks/routing/compare.py"
    res = subprocess.run([sys.executable, str(script), str(a), str(b), "--prompts", str(prompts),
                          "--out", str(tmp_path / "d.json")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    got = json.loads((tmp_path / "d.json").read_text())["written"]
    assert np.isclose(got["accuracy"]["mean"], 1 / 6) and got["wrong_domain_confident"] == {"a": 1, "b": 0}
    assert "+16.7" in res.stdout and "-25.0" in res.stdout
    wrong = tmp_path / "other.jsonl"
    wrong.write_text("".join(json.dumps({**r, "id": r["id"] + "x", "text": "t", "style": "q", "lang": "en"}) + "\n"
                             for r in ROWS))
    res = subprocess.run([sys.executable, str(script), str(a), str(b), "--prompts", str(wrong)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "another prompt file" in res.stderr
    other = _report({k: v for k, v in B.items() if k != "x9"})
    other["written"]["seed"] = 1
    b.write_text(json.dumps(other))
    res = subprocess.run([sys.executable, str(script), str(a), str(b), "--prompts", str(prompts)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "differ in written seed" in res.stderr


def _features_script():
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks/routing/features.py"
    spec = importlib.util.spec_from_file_location("routing_features", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_feature_variants_route_by_threshold_and_gate_and_measure_closeness():
    from loralab.serve.routeclf import Classifier

    fx = _features_script()
    clf = Classifier(["a", "b", "none"], np.eye(3, dtype=np.float32) * 10, np.zeros(3, np.float32), 1.0, 0.9, {})
    F = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [0.1, 0.09, 0]], dtype=np.float32)
    got, conf = fx.routed(clf, F)
    p = clf.probs([""] * 4, F)
    assert got.tolist() == [0, 1, 2, 2]  # the last: "a" is the argmax but below the threshold
    assert np.allclose(conf, [p[0, 0], p[1, 1], p[2, 2], p[3, 2]])
    gate = np.array([[False, True], [False, True], [False, False], [True, True]])
    got, conf = fx.routed(clf, F, gate)
    assert got.tolist() == [2, 1, 2, 2] and np.isclose(conf[0], p[0, 2])  # the gate closes "a" for row 0 only
    X = np.array([[1, 0], [0, 1]], dtype=np.float32)
    pools = [np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32), np.array([[0.8, 0.6], [0, -1]], dtype=np.float32)]
    near = fx.closeness(X, pools, k=2)
    assert np.allclose(near, [[(1 + 0.6) / 2, (0.8 + 0) / 2], [(1 + 0.8) / 2, (0.6 - 1) / 2]])


def test_generated_questions_are_first_lines_without_repeats():
    fx = _features_script()
    got = fx.generate_questions("tiny-random", ["The match ended 2-1.", "The match ended 2-1.", "A patient had a fever."])
    assert 1 <= len(got) <= 2  # the two equal texts give one greedy answer, kept once
    assert all(q and "\n" not in q and q == q.strip() for q in got)
    assert len(set(got)) == len(got)
