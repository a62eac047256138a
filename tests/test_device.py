"""Device policy by measurement: cache key, choice from measured numbers, overrides, int8
frozen weights, and the precision every number carries (no timing assertions)."""

from __future__ import annotations

import copy
import json
import warnings

import pytest
import torch
from typer.testing import CliRunner

from loralab import device
from loralab.data.records import Record, write_records
from loralab.io import iter_jsonl
from loralab.score import ScoreConfig, score, scorer_format

TINY_SHAPES = (64, 128, 32, 512)


def test_cache_key_names_machine_torch_threads_and_shapes(tmp_path):
    key = device.profile_key("cpu", TINY_SHAPES)
    assert key["name"] == device.device_name("cpu") and key["torch"] == torch.__version__
    assert key["threads"] == torch.get_num_threads() and key["shapes"] == list(TINY_SHAPES)
    path = device.cache_path(key, tmp_path)
    assert path.parent == tmp_path and path == device.cache_path(dict(key), tmp_path)  # stable digest
    for field, other in (("torch", "0.0.0"), ("name", "another cpu"), ("threads", 97), ("shapes", [1, 2, 3, 4])):
        assert device.cache_path({**key, field: other}, tmp_path) != path


def test_profile_measures_once_then_reads_the_cache(tmp_path):
    first = device.profile("cpu", TINY_SHAPES, root=tmp_path, rows=8, seconds=0.01, vocab_cols=256)
    assert not first.cached and set(first.gflops) == {"float32", "bfloat16", device.INT8}
    assert all(g >= 0 for g in first.gflops.values()) and first.gflops["float32"] > 0
    saved = json.loads(first.path.read_text())
    assert saved["key"] == device.profile_key("cpu", TINY_SHAPES) and saved["gflops"] == first.gflops
    # the cache is what later calls use: planted numbers come back unchanged, without measuring
    planted = {"float32": 1.0, "bfloat16": 9.0, device.INT8: 4.0}
    first.path.write_text(json.dumps({"key": saved["key"], "gflops": planted}))
    again = device.profile("cpu", TINY_SHAPES, root=tmp_path)
    assert again.cached and again.gflops == planted and again.choose("frozen") == "bfloat16"
    # a file written for another key (another torch, another machine) is not trusted
    first.path.write_text(json.dumps({"key": {**saved["key"], "torch": "0.0.0"}, "gflops": planted}))
    assert not device.profile("cpu", TINY_SHAPES, root=tmp_path, rows=8, seconds=0.01, vocab_cols=256).cached


@pytest.mark.parametrize("gflops, frozen, train, fast", [
    # Xeon, AVX-512 BF16 without AMX: bf16 half of fp32 -> fp32 everywhere
    ({"float32": 330, "bfloat16": 170, device.INT8: 200}, "float32", "float32", "float32"),
    # AMD EPYC, AVX-512 BF16 + VNNI: bf16 3x, int8 4.3x -> bf16 for floats, int8 when allowed
    ({"float32": 129, "bfloat16": 391, device.INT8: 558}, "bfloat16", "bfloat16", device.INT8),
    # Xeon with AMX: bf16 fastest of all
    ({"float32": 60, "bfloat16": 160, device.INT8: 150}, "bfloat16", "bfloat16", "bfloat16"),
    # a gain under the margin is not worth the rounding
    ({"float32": 100, "bfloat16": 110, device.INT8: 112}, "float32", "float32", "float32"),
    # a format that could not run measures 0
    ({"float32": 100, "bfloat16": 0.0, device.INT8: 300}, "float32", "float32", device.INT8),
])
def test_choice_follows_the_measured_numbers(gflops, frozen, train, fast):
    assert device.choose(gflops, "frozen") == frozen
    assert device.choose(gflops, "train") == train  # int8 never for training
    assert device.fast_format(gflops) == fast
    with pytest.raises(ValueError, match="unknown path"):
        device.choose(gflops, "serve")


def test_overrides_win_over_the_measurement(monkeypatch):
    for dt, want in (("float32", torch.float32), ("bf16", torch.bfloat16), ("float16", torch.float16)):
        assert device.resolve("cpu", dt).dtype == want and device.resolve("cpu", dt, path="train").dtype == want
    monkeypatch.setenv("LORALAB_CPU_BF16", "1")
    assert device.resolve("cpu", "auto", path="train").dtype == torch.bfloat16
    monkeypatch.setenv("LORALAB_CPU_BF16", "0")
    assert device.resolve("cpu", "auto").dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        device.resolve("cpu", "int3")
    assert scorer_format(ScoreConfig(precision="fast", dtype="float32")) == "float32"
    assert scorer_format(ScoreConfig(precision="exact")) == "float32"


def test_precision_record_and_int8_weights(tiny):
    rec = device.precision_record(tiny)
    assert rec["precision"] == "cpu/float32" and rec["format"] == "float32" and rec["torch"] == torch.__version__
    half = copy.deepcopy(tiny.model).to(torch.bfloat16)
    assert device.precision_record(half)["precision"] == "cpu/bfloat16"
    q = device.quantize_int8(copy.deepcopy(tiny.model))
    assert device.is_int8(q) and device.precision_record(q)["precision"] == "cpu/int8-dynamic"
    assert not any(type(m) is torch.nn.Linear for m in q.modules())  # every linear, the head included
    assert device.precision_record(placement=device.Placement(torch.device("cpu"), torch.bfloat16))["format"] \
        == "bfloat16"


def test_int8_scores_are_close_to_exact_and_cached_apart(tiny, tmp_path):
    """Fast scores carry their precision, never come from the exact scores' cache, and rank alike."""
    from scipy.stats import spearmanr

    src = tmp_path / "in"
    src.mkdir()
    recs = [Record(kind="qa", question=f"What is {i} times {i + 3}?", answer=f"It is {i * (i + 3)}, I think.")
            for i in range(12)]
    write_records(src, recs)
    cfg = ScoreConfig(model="tiny-random", cache_dir=str(tmp_path / "cache"), progress=False)
    exact = score(src, tmp_path / "exact", cfg, loaded=tiny)
    q = copy.deepcopy(tiny)
    device.quantize_int8(q.model)
    fast = score(src, tmp_path / "fast", cfg, loaded=q)
    assert exact["precision"]["precision"] == "cpu/float32" and fast["precision"]["precision"] == "cpu/int8-dynamic"
    assert fast["computed"] == 12 and fast["from_cache"] == 0  # another precision is another cache key
    e = [r["meta"]["score"] for r in iter_jsonl(tmp_path / "exact" / "records.jsonl")]
    f = [r["meta"]["score"] for r in iter_jsonl(tmp_path / "fast" / "records.jsonl")]
    assert {s["precision"] for s in f} == {"cpu/int8-dynamic"}
    assert max(abs(a["loss_cond"] - b["loss_cond"]) for a, b in zip(e, f)) < 0.05
    assert spearmanr([a["ifd"] for a in e], [b["ifd"] for b in f]).statistic > 0.8


def test_training_records_its_precision(tmp_path):
    from loralab.config import TrainConfig
    from loralab.train import train

    data = tmp_path / "data"
    write_records(data, [Record(kind="qa", source={"doc": f"d{i}"}, question=f"Q{i}?", answer=f"A {i}.")
                         for i in range(12)])
    cfg = TrainConfig(model="tiny-random", data=str(data), out=str(tmp_path / "run"), device="cpu",
                      dtype="bfloat16", steps=1, max_seq_len=64, batch_size=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = train(cfg, progress=False)
    assert card["precision"]["precision"] == "cpu/bfloat16" and card["precision"]["trainable"] == "float32"
    saved = json.loads((tmp_path / "run" / "precision.json").read_text())
    assert saved == card["precision"]
    # resuming where another format would be used is refused, not mixed
    saved["precision"], saved["format"] = "cpu/float32", "float32"
    (tmp_path / "run" / "precision.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="was trained in cpu/float32"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            train(cfg, resume=True, progress=False)


def test_doctor_prints_peaks_and_choices(monkeypatch, tmp_path):
    from loralab.cli import app

    monkeypatch.setenv("LORALAB_HOME", str(tmp_path))
    key = device.profile_key("cpu", device.DEFAULT_SHAPES)
    path = device.cache_path(key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"key": key, "gflops": {"float32": 129.0, "bfloat16": 391.0, device.INT8: 558.0}}))
    res = CliRunner().invoke(app, ["doctor"])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "391.0" in text and "558.0" in text and "3.03" in text  # peaks and their ratio to fp32
    assert "int8-dynamic" in text and "read from" in text
    res = CliRunner().invoke(app, ["doctor", "--dtype", "float32"])
    assert res.exit_code == 0 and "--dtype" in res.output
