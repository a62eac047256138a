"""Model resolution: specs, fingerprints, clear errors on bad specs and damaged files."""

from __future__ import annotations

import time

import pytest
import torch

from loralab import device, models


def test_tiny_is_seeded_and_real_llama(tiny):
    again = models.load("tiny-random", device="cpu", dtype="float32")
    assert again.fingerprint == tiny.fingerprint
    for (n1, p1), (n2, p2) in zip(tiny.model.named_parameters(), again.model.named_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)
    cfg = tiny.model.config
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 2 and cfg.hidden_size == 64
    assert cfg.vocab_size == len(tiny.tokenizer)


def test_tiny_loads_fast(tiny):
    t0 = time.perf_counter()
    models.load("tiny-random", device="cpu", dtype="float32")
    assert time.perf_counter() - t0 < 2.0


def test_unknown_spec_lists_known_names():
    with pytest.raises(models.ModelError) as e:
        models.load("no-such-model")
    msg = str(e.value)
    assert "no-such-model" in msg and "smollm2-135m" in msg and "tiny-random" in msg


def test_aliases_resolve_to_default():
    assert models.normalize_spec(None) == models.DEFAULT_MODEL
    assert models.normalize_spec("default") == models.DEFAULT_MODEL


def test_truncated_gguf_names_the_file(tmp_path):
    src = models.gguf_path()
    bad = tmp_path / "cut.gguf"
    with open(src, "rb") as f:
        bad.write_bytes(f.read(2_000_000))  # header + part of the tensors
    with pytest.raises(models.ModelError) as e:
        models.check_gguf(bad)
    assert str(bad) in str(e.value)
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf at all" * 10)
    with pytest.raises(models.ModelError, match="junk.gguf"):
        models.check_gguf(junk)
    models.check_gguf(src)  # the packaged file is intact


def test_truncated_safetensors_names_the_file(tmp_path, tiny):
    folder = tmp_path / "m"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    ok = models.load(str(folder), device="cpu", dtype="float32")
    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(ok.model(x).logits, tiny.model(x).logits)
    st = folder / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) // 2])
    with pytest.raises(models.ModelError) as e:
        models.load(str(folder))
    assert "model.safetensors" in str(e.value) and "truncated" in str(e.value)


def test_folder_errors(tmp_path):
    with pytest.raises(models.ModelError, match="config.json"):
        models.load(str(tmp_path))
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(models.ModelError, match="adapter"):
        models.load(str(tmp_path))


def test_device_policy():
    p = device.resolve("cpu", "auto")
    assert p.device.type == "cpu"
    assert p.dtype == (torch.bfloat16 if device.cpu_has_bf16() else torch.float32)
    assert device.resolve("cpu", "float32").dtype == torch.float32
    with pytest.raises(ValueError, match="unknown dtype"):
        device.resolve("cpu", "int3")


def test_default_model_cache_layout():
    folder = models.ensure_default_cached()
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", models.CARD} <= names
    cached = {c["name"]: c for c in models.list_cached()}
    assert cached[models.DEFAULT_MODEL]["fingerprint"] == models._folder_fingerprint(folder)
    # the dequantized weights are all there: SmolLM2-135M's 134,515,008 parameters in fp32, plus the header
    st = folder / "model.safetensors"
    with open(st, "rb") as f:
        header = int.from_bytes(f.read(8), "little")
    assert st.stat().st_size == 8 + header + 4 * 134_515_008
    assert cached[models.DEFAULT_MODEL]["bytes"] == sum(p.stat().st_size for p in folder.iterdir() if p.is_file())


def test_cpu_bf16_override(monkeypatch):
    monkeypatch.setenv("LORALAB_CPU_BF16", "1")
    assert device.resolve("cpu").dtype == torch.bfloat16
    monkeypatch.setenv("LORALAB_CPU_BF16", "0")
    assert device.resolve("cpu").dtype == torch.float32


def test_weakened_model_keeps_the_first_layers():
    from loralab import models

    full = models.load("tiny-random", device="cpu", dtype="float32")
    weak = models.load("tiny-random@layers=1", device="cpu", dtype="float32")
    assert len(weak.model.model.layers) == 1 == weak.model.config.num_hidden_layers
    assert len(full.model.model.layers) > 1 and weak.fingerprint != full.fingerprint
    assert weak.spec == "tiny-random@layers=1" and models.check_spec("tiny-random@layers=1") == weak.spec
    import torch

    x = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():  # the kept layer is the full model's first layer, weight for weight
        torch.testing.assert_close(weak.model.model.layers[0].mlp.up_proj.weight,
                                   full.model.model.layers[0].mlp.up_proj.weight)
        assert not torch.allclose(weak.model(x).logits, full.model(x).logits)
    with pytest.raises(models.ModelError, match="fewer than"):
        models.load("tiny-random@layers=99")
