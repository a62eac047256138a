"""Adapters from strangers: every hostile folder is refused with its reason before anything
is loaded into the model (the real `loralab generate --adapter` entry point)."""

from __future__ import annotations

import json
import shutil
import struct
import warnings
from pathlib import Path

import pytest
import torch
from conftest import FULL, assert_user_error, run_cli
from safetensors.torch import load_file, save_file

from loralab import models
from loralab.adapters import AdapterError, apply_adapters
from loralab.config import TrainConfig
from loralab.data.records import Record, write_records
from loralab.tensorfile import TensorFileError, adapter_problems, read_header
from loralab.train import train


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("hostile")
    write_records(root / "data", [Record(kind="qa", domain="bees", source={"doc": f"d{i}"}, question=f"Q{i}?",
                                         answer=f"Answer {i} about bees.") for i in range(8)])
    cfg = TrainConfig(model="tiny-random", data=str(root / "data"), out=str(root / "run"), device="cpu",
                      dtype="float32", steps=1, rank=4, max_seq_len=64, eval_frac=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(cfg, progress=False)
    return root / "run" / "adapter"


def _variant(good: Path, tmp: Path, name: str) -> Path:
    d = tmp / name
    shutil.copytree(good, d)
    return d


def _rewrite_header(path: Path, edit) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    edit(header)
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    path.write_bytes(struct.pack("<Q", len(h)) + h + raw[8 + n:])


def _first_tensor(h: dict) -> str:
    return next(k for k in h if k != "__metadata__")


def hostile(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (folder, a word the refusal must contain)."""
    out = {}
    d = _variant(good, tmp, "pickle")
    torch.save(load_file(d / "adapter_model.safetensors"), d / "adapter_model.bin")
    (d / "adapter_model.safetensors").unlink()
    out["pickle .bin only"] = (d, "safetensors")

    d = _variant(good, tmp, "header_past_end")
    f = d / "adapter_model.safetensors"
    f.write_bytes(struct.pack("<Q", 10**9) + f.read_bytes()[8:])
    out["header length past the end"] = (d, "header")

    d = _variant(good, tmp, "offsets_outside")
    _rewrite_header(d / "adapter_model.safetensors",
                    lambda h: h[_first_tensor(h)].__setitem__("data_offsets", [0, 10**12]))
    out["offsets outside the data"] = (d, "outside")

    d = _variant(good, tmp, "shape_lies")
    _rewrite_header(d / "adapter_model.safetensors",
                    lambda h: h[_first_tensor(h)].__setitem__("shape", [100_000, 100_000]))
    out["shape disagrees with its bytes"] = (d, "shape")

    d = _variant(good, tmp, "wrong_shapes")
    t = load_file(d / "adapter_model.safetensors")
    k = next(x for x in t if x.endswith("lora_A.weight"))
    t[k] = torch.zeros(t[k].shape[0], t[k].shape[1] + 3)
    save_file(t, d / "adapter_model.safetensors")
    out["shapes that do not match the base"] = (d, "shape")

    d = _variant(good, tmp, "foreign_module")
    t = load_file(d / "adapter_model.safetensors")
    t["base_model.model.model.layers.99.mlp.up_proj.lora_A.weight"] = torch.zeros(4, 64)
    save_file(t, d / "adapter_model.safetensors")
    out["a module the base does not have"] = (d, "no module")

    d = _variant(good, tmp, "huge_vocab")
    tok = {"version": "1.0", "added_tokens": [{"id": 50_000 + i, "content": f"<t{i}>", "special": True,
                                                "single_word": False, "lstrip": False, "rstrip": False,
                                                "normalized": False} for i in range(300_000)],
           "model": {"type": "BPE", "vocab": {}, "merges": []}}
    (d / "tokenizer.json").write_text(json.dumps(tok))
    (d / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast"}))
    out["tokenizer with a huge vocabulary"] = (d, "token")

    d = _variant(good, tmp, "card_traversal")
    card = json.loads((d / "loralab.json").read_text())
    card["base"]["fingerprint"] = "0" * 16
    card["data"] = {"path": "../../../../etc/passwd", "digest": "x"}
    (d / "loralab.json").write_text(json.dumps(card))
    out["card naming another base, data path outside"] = (d, "fingerprint")

    d = _variant(good, tmp, "not_json_config")
    (d / "adapter_config.json").write_bytes(b"\x00\x01 not json")
    out["adapter_config.json that is not JSON"] = (d, "adapter_config")
    return out


def test_header_checks_pass_a_good_file(good):
    h = read_header(good / "adapter_model.safetensors")
    tiny = models.load("tiny-random", device="cpu", dtype="float32")
    cfg = json.loads((good / "adapter_config.json").read_text())
    assert h and adapter_problems(h, tiny.model, cfg) == []


def test_every_hostile_folder_refused_before_loading(good, tmp_path, figures):
    cases = hostile(good, tmp_path)
    tiny = models.load("tiny-random", device="cpu", dtype="float32")
    for what, (folder, word) in cases.items():
        with pytest.raises(AdapterError) as e:
            apply_adapters(tiny, [folder])
        assert word.lower() in str(e.value).lower(), (what, str(e.value))
    assert not hasattr(tiny.model, "peft_config")  # the base was never wrapped
    # through the real entry point: one line, exit 2 (every case with the full suite)
    for what, (folder, word) in list(cases.items())[: None if FULL else 2]:
        r = run_cli("generate", "hi", "--model", "tiny-random", "--adapter", folder, "--max-new-tokens", "2",
                    timeout=120)
        line = assert_user_error(r)
        assert word.lower() in line.lower(), (what, line)
    figures("hostile_adapters", cases=len(cases), refused=len(cases), loaded=0)


@pytest.mark.parametrize("edit, word", [
    (lambda h: h[_first_tensor(h)].__setitem__("dtype", "F99"), "dtype"),
    (lambda h: h[_first_tensor(h)].__setitem__("data_offsets", [8, 4]), "outside"),
    (lambda h: h.__setitem__("evil", {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}), "overlap"),
])
def test_read_header_names_the_lie(good, tmp_path, edit, word):
    f = tmp_path / "a.safetensors"
    shutil.copy(good / "adapter_model.safetensors", f)
    _rewrite_header(f, edit)
    with pytest.raises(TensorFileError, match=word):
        read_header(f)


def test_checks_hold_on_an_already_wrapped_model(good):
    """A second adapter checked against a base PEFT has already wrapped finds the same modules."""
    tiny = models.load("tiny-random", device="cpu", dtype="float32")
    wrapped = apply_adapters(tiny, [good])
    cfg = json.loads((good / "adapter_config.json").read_text())
    h = read_header(good / "adapter_model.safetensors")
    assert adapter_problems(h, wrapped.model.get_base_model(), cfg) == []
