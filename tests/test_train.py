"""`loralab train` end to end on the tiny model: config, CLI, resume, baselines, aLoRA, DDP."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from loralab import models
from loralab.adapters import AdapterError, apply_adapters
from loralab.cli import app
from loralab.config import ConfigError, TrainConfig, load_config
from loralab.data.records import Record, write_records
from loralab.logprobs import token_logprobs
from loralab.train import build_examples, build_model, train

TRIGGER = "<|use_lora_sport|>"
QUICK = dict(model="tiny-random", device="cpu", dtype="float32", max_seq_len=64, batch_size=2)  # exact on CPU


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("records")
    recs = [Record(kind="qa", domain="sport", source={"doc": f"g{i}"}, question=f"Field goal length in game {i}?",
                   answer=f"{i + 20} yards.") for i in range(12)]
    recs += [Record(kind="raw", domain="sport", source={"doc": f"p{i}"},
                    text=f"The Raiders scored a touchdown in quarter {i % 4 + 1}.") for i in range(6)]
    write_records(d, recs)
    return d


@pytest.fixture(scope="module")
def anchors(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("anchors")
    write_records(d, [Record(kind="qa", question=f"What is {i} plus {i}?", answer=str(2 * i)) for i in range(5)])
    return d


def _quiet_train(cfg, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(cfg, progress=False, **kw)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "adapter" / "adapter_model.safetensors")


def test_config_yaml_then_flags_and_every_problem(tmp_path):
    y = tmp_path / "run.yaml"
    y.write_text(yaml.safe_dump({"data": "d", "out": "o", "rank": 4, "lr": 1e-3, "steps": 7}))
    cfg = load_config(TrainConfig, y, rank=16, steps=None)  # None flags leave the YAML value
    assert (cfg.rank, cfg.lr, cfg.steps, cfg.epochs, cfg.packing) == (16, 1e-3, 7, None, True)
    assert load_config(TrainConfig, data="d", out="o").epochs == 1.0
    assert load_config(TrainConfig, data="d", out="o", trigger="<t>", trigger_mode="alora").packing is False
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, data="d", out="o", trigger_mode="alora", packing=True, kl_weight=0.5)
    for part in ("needs a trigger", "packing cannot be used with alora", "kl_weight needs anchor records"):
        assert part in str(e.value)
    with pytest.raises(ConfigError, match="rank"):
        load_config(TrainConfig, data="d", out="o", rank=0, bogus=1)


def test_cli_trains_and_refuses_to_overwrite(data, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--model", "tiny-random", "--data", str(data), "--out", str(out), "--steps", "2",
            "--device", "cpu", "--dtype", "float32", "--max-seq-len", "64", "-q"]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "eval loss" in res.output and (out / "adapter" / "loralab.json").exists()
    assert json.loads((out / "config.json").read_text())["steps"] == 2
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "already holds a run" in " ".join(again.output.split())


def test_bf16_base_keeps_fp32_adapters(data, tmp_path):
    cfg = TrainConfig(model="tiny-random", data=str(data), out=str(tmp_path), device="cpu", dtype="bfloat16")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, _, _, _ = build_model(cfg)
    trainable = {p.dtype for p in model.parameters() if p.requires_grad}
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert trainable == {torch.float32} and frozen == {torch.bfloat16}
    card = _quiet_train(cfg.model_copy(update={"steps": 2, "max_seq_len": 64}))
    assert np.isfinite(card["curve"]["last_loss"])


def test_replay_mixes_anchor_fraction(data, anchors, tmp_path):
    cfg = TrainConfig(data=str(data), out=str(tmp_path), replay=str(anchors), replay_frac=0.25, **QUICK)
    tok = models.load("tiny-random", device="cpu", dtype="float32").tokenizer
    train_ex, _, info = build_examples(cfg, tok)
    n_anchor = sum(e.anchor for e in train_ex)
    assert n_anchor == info["replay"]["examples"] == round(0.25 / 0.75 * (len(train_ex) - n_anchor))
    again, _, _ = build_examples(cfg, tok)
    assert [e.ids for e in again] == [e.ids for e in train_ex]  # seeded
    card = _quiet_train(cfg.model_copy(update={"kl_weight": 0.5, "steps": 3, "lr": 5e-2, "batch_size": 8}))
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert any(r.get("kl_sum", 0) > 0 for r in log) and np.isfinite(card["curve"]["last_loss"])


def test_resume_after_sigkill_matches_uninterrupted(data, tmp_path):
    """kill -9 after the first checkpoint; --resume ends with the same adapter as a clean run."""
    cfg = dict(data=str(data), steps=12, save_every=3, lr=1e-2, **QUICK)
    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "loralab.cli", "train", "--model", "tiny-random", "--data", str(data), "--out",
           str(killed), "--steps", "12", "--save-every", "3", "--lr", "1e-2", "--device", "cpu",
           "--dtype", "float32", "--max-seq-len", "64", "--batch-size", "2", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(killed.glob("checkpoints/step-*/state.json")):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (killed / "adapter").exists()  # really interrupted mid-run
    _quiet_train(TrainConfig(out=str(killed), **cfg), resume=True)
    clean = tmp_path / "clean"
    _quiet_train(TrainConfig(out=str(clean), **cfg))
    a, b = _weights(killed), _weights(clean)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0)
    la = [json.loads(x) for x in (killed / "train_log.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (clean / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in la] == list(range(13))
    np.testing.assert_allclose([r.get("loss", 0) for r in la], [r.get("loss", 0) for r in lb], atol=1e-6)
    with pytest.raises(ValueError, match="different config"):
        _quiet_train(TrainConfig(out=str(clean), **{**cfg, "lr": 1e-3}), resume=True)


@pytest.mark.parametrize("method", ["full", "scratch"])
def test_full_and_scratch_write_model_folders(method, data, tmp_path):
    from transformers import AutoModelForCausalLM

    card = _quiet_train(TrainConfig(data=str(data), out=str(tmp_path), method=method, steps=2, **QUICK))
    folder = tmp_path / "adapter"
    assert card["kind"] == "model" and (folder / "model.safetensors").exists()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    base = models.load("tiny-random", device="cpu", dtype="float32")
    w, w0 = model.model.layers[0].mlp.up_proj.weight, base.model.model.layers[0].mlp.up_proj.weight
    delta = (w - w0).abs().max().item()
    assert (0 < delta < 0.05) if method == "full" else delta > 0.05  # fine-tuned vs fresh init
    assert (card["base"]["fingerprint"] is None) == (method == "scratch")
    with pytest.raises(AdapterError, match="a full model"):
        apply_adapters(base, [folder])


def test_alora_acts_only_from_the_trigger_and_engine_matches_peft(data, tmp_path):
    _quiet_train(TrainConfig(data=str(data), out=str(tmp_path), steps=3, lr=5e-2, trigger=TRIGGER,
                             trigger_mode="alora", **QUICK))
    base = models.load("tiny-random", device="cpu", dtype="float32")
    loaded = apply_adapters(base, [tmp_path])
    tok = loaded.tokenizer
    pre = tok.encode("<|im_start|>user\nHow long", add_special_tokens=False)
    trig = tok.encode(TRIGGER + " was the kick?", add_special_tokens=False)
    cont = tok.encode("It was 31 yards.", add_special_tokens=False)
    ids = torch.tensor([pre + trig + cont])
    with torch.no_grad():
        ad = torch.log_softmax(loaded.model(input_ids=ids).logits.float(), -1)[0]  # PEFT computes offsets
        with loaded.model.disable_adapter():
            bs = torch.log_softmax(loaded.model(input_ids=ids).logits.float(), -1)[0]
    n = len(pre)
    torch.testing.assert_close(ad[:n], bs[:n], atol=1e-6, rtol=0)  # before the trigger: the base exactly
    assert (ad[n:] - bs[n:]).abs().max() > 1e-3  # from the trigger on: the adapter
    ours = token_logprobs(loaded.model, [(pre + trig, cont)])[0].logprobs
    ref = ad[len(pre + trig) - 1: -1].gather(1, torch.tensor(cont)[:, None])[:, 0].numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)


def test_accelerate_two_processes_equal_grad_accumulation(data, tmp_path):
    """DDP over 2 gloo processes == 1 process with grad_accum 2 (same batches, averaged gradients)."""
    cfg = dict(model="tiny-random", data=str(data), device="cpu", dtype="float32", max_seq_len=64,
               batch_size=2, steps=3, lr=1e-2, dropout=0.0)
    y = tmp_path / "ddp.yaml"
    y.write_text(yaml.safe_dump({**cfg, "out": str(tmp_path / "ddp")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # on a machine without GPUs, --multi_gpu starts torchrun processes that Accelerator(cpu=True) joins with
    # gloo (MULTI_CPU); `--cpu --num_processes 2` without MPI would start ONE process
    res = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
                          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                          "-m", "loralab.cli", "train", str(y), "-q"],
                         capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    _quiet_train(TrainConfig(**cfg, out=str(tmp_path / "one"), grad_accum=2))
    a, b = _weights(tmp_path / "ddp"), _weights(tmp_path / "one")
    assert a.keys() == b.keys() and all(torch.isfinite(v).all() for v in a.values())
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0)
    card = json.loads((tmp_path / "ddp" / "adapter" / "loralab.json").read_text())
    assert card["curve"]["steps"] == 3
    one = json.loads((tmp_path / "one" / "adapter" / "loralab.json").read_text())
    assert card["curve"]["first_loss"] == pytest.approx(one["curve"]["first_loss"], abs=1e-5)  # gathered loss


@pytest.mark.slow
def test_smoke_real_model(tmp_path):
    """The embedded SmolLM2 trains 5 short steps and writes a complete adapter folder."""
    d = tmp_path / "data"
    write_records(d, [Record(kind="qa", domain="sport", source={"doc": f"g{i}"},
                             question=f"Who scored in quarter {i % 4 + 1}?", answer=f"Player {i} ran it in.")
                      for i in range(10)])
    t0 = time.time()
    card = _quiet_train(TrainConfig(data=str(d), out=str(tmp_path / "run"), steps=5, max_seq_len=64,
                                    batch_size=2, lr=1e-3, trigger=TRIGGER, eval_frac=0.2))
    files = sorted(p.name for p in (tmp_path / "run" / "adapter").iterdir())
    for f in ("adapter_config.json", "adapter_model.safetensors", "loralab.json", "tokenizer.json"):
        assert f in files
    c = card["curve"]
    assert all(np.isfinite(c[k]) for k in ("first_loss", "last_loss", "eval_before", "eval_after"))
    print(f"smoke: {time.time() - t0:.1f}s, loss {c['first_loss']:.3f}->{c['last_loss']:.3f}, "
          f"eval {c['eval_before']:.3f}->{c['eval_after']:.3f}, {c['mean_tokens_per_s']:.0f} tok/s")


def test_compiled_layers_train_like_eager(data, tmp_path):
    """--compile changes speed, not results: same losses and adapter as eager (fp32, tiny model)."""
    cfg = dict(data=str(data), steps=3, lr=1e-2, **QUICK)
    eager = _quiet_train(TrainConfig(out=str(tmp_path / "eager"), **cfg))
    comp = _quiet_train(TrainConfig(out=str(tmp_path / "comp"), compile=True, **cfg))
    assert comp["config"]["compile"] is True
    np.testing.assert_allclose(comp["curve"]["last_loss"], eager["curve"]["last_loss"], atol=1e-5)
    np.testing.assert_allclose(comp["curve"]["eval_after"], eager["curve"]["eval_after"], atol=1e-5)
    a, b = _weights(tmp_path / "eager"), _weights(tmp_path / "comp")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)  # Adam: lr-sized steps from ~0 grads


def test_gradient_checkpointing_trains_like_plain(data, tmp_path):
    cfg = dict(data=str(data), steps=3, lr=1e-2, **QUICK)
    plain = _quiet_train(TrainConfig(out=str(tmp_path / "plain"), **cfg))
    ckpt = _quiet_train(TrainConfig(out=str(tmp_path / "ckpt"), gradient_checkpointing=True, **cfg))
    np.testing.assert_allclose(ckpt["curve"]["last_loss"], plain["curve"]["last_loss"], atol=1e-5)
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "ckpt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-4, rtol=1e-3)
