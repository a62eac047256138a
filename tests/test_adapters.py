"""The adapter folder: layout, card, loading with checks, and plain-PEFT interoperability."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from loralab import __version__, models
from loralab.adapters import AdapterError, apply_adapters, data_digest, load_card
from loralab.config import TrainConfig
from loralab.data.records import Record, write_records
from loralab.logprobs import token_logprobs
from loralab.train import train

TRIGGER = "<|use_lora_sport|>"


def sport_records(n: int = 16) -> list[Record]:
    out = []
    for i in range(n):
        if i % 4 == 0:
            out.append(Record(kind="raw", domain="sport", source={"doc": f"g{i}"},
                              text=f"In game {i} the Raiders scored a touchdown and a {i + 20}-yard field goal."))
        else:
            out.append(Record(kind="qa", domain="sport", source={"doc": f"g{i}"},
                              question=f"How long was the field goal in game {i}?", answer=f"It was {i + 20} yards."))
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A trigger adapter trained a few steps on the tiny model in fp32 (large lr: visible change)."""
    root = tmp_path_factory.mktemp("adapters")
    write_records(root / "data", sport_records())
    cfg = TrainConfig(model="tiny-random", data=str(root / "data"), out=str(root / "run"), device="cpu",
                      dtype="float32", steps=3, lr=5e-2, rank=4, max_seq_len=96, trigger=TRIGGER, eval_frac=0.2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        card = train(cfg, progress=False)
    return root, cfg, card


def test_folder_layout_and_card(run):
    root, cfg, card = run
    folder = root / "run" / "adapter"
    for f in ("adapter_config.json", "adapter_model.safetensors", "loralab.json", "tokenizer.json"):
        assert (folder / f).exists(), f
    assert load_card(root / "run") == load_card(folder) == json.loads((folder / "loralab.json").read_text())
    tiny = models.load("tiny-random", device="cpu", dtype="float32")
    assert card["base"] == {"spec": "tiny-random", "fingerprint": tiny.fingerprint, "path": None}
    assert card["data"]["digest"] == data_digest(root / "data") is not None
    assert card["trigger"] == TRIGGER and card["tokens_added"] == 1 and card["vocab_size"] == len(tiny.tokenizer) + 1
    assert card["domain"] == "sport" and card["loralab_version"] == __version__
    assert card["config"] == cfg.dump()
    c = card["curve"]
    assert c["steps"] == 3 and c["eval_before"] is not None and c["eval_after"] is not None
    assert c["best_loss"] == min(c["first_loss"], c["last_loss"], c["best_loss"])
    log = [json.loads(x) for x in (root / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    assert log[0]["eval_loss"] == c["eval_before"] and log[-1]["eval_loss"] == c["eval_after"]
    # only the trigger's embedding row trains besides the LoRA matrices
    peft_cfg = json.loads((folder / "adapter_config.json").read_text())
    tid = len(tiny.tokenizer)
    assert peft_cfg["trainable_token_indices"] == [tid]
    from safetensors.torch import load_file

    weights = load_file(folder / "adapter_model.safetensors")
    rows = {k: tuple(v.shape) for k, v in weights.items() if "lora_" not in k}
    assert list(rows.values()) == [(1, 64)], rows  # one embedding row, not the (V, H) matrix
    assert not (root / "run" / "checkpoints").exists()


def _pairs(tok):
    ids = tok.encode(f"<|im_start|>user\n{TRIGGER}How long was the field goal?<|im_end|>\n", add_special_tokens=False)
    cont = tok.encode("<|im_start|>assistant\nIt was 31 yards.<|im_end|>", add_special_tokens=False)
    return [(ids, cont), ([tok.bos_token_id], tok.encode("The Raiders scored.", add_special_tokens=False))]


def test_apply_adapters_matches_plain_peft_in_a_clean_process(run, tmp_path):
    """A process importing only transformers + peft reads the folder and gets the same log-probs."""
    root, _, _ = run
    base = models.load("tiny-random", device="cpu", dtype="float32")
    base_dir = tmp_path / "base"
    base.model.save_pretrained(base_dir)
    base.tokenizer.save_pretrained(base_dir)
    before = [s.logprobs for s in token_logprobs(base.model, _pairs(base.tokenizer))]
    loaded = apply_adapters(base, [root / "run"])
    assert len(loaded.tokenizer) == len(base.tokenizer) + 1 and loaded.fingerprint == base.fingerprint
    pairs = _pairs(loaded.tokenizer)
    assert TRIGGER in loaded.tokenizer.decode(pairs[0][0])
    ours = [s.logprobs for s in token_logprobs(loaded.model, pairs)]
    assert np.abs(ours[1] - before[1]).max() > 1e-3  # the adapter changes the model (same raw-text tokens)
    script = textwrap.dedent(f"""
        import json, sys, torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from peft import PeftModel
        assert "loralab" not in sys.modules
        tok = AutoTokenizer.from_pretrained({str(root / 'run' / 'adapter')!r})
        model = AutoModelForCausalLM.from_pretrained({str(base_dir)!r}, dtype=torch.float32)
        model.resize_token_embeddings(len(tok))
        model = PeftModel.from_pretrained(model, {str(root / 'run' / 'adapter')!r}).eval()
        out = []
        for ctx, cont in json.loads(sys.argv[1]):
            ids = torch.tensor([ctx + cont])
            with torch.no_grad():
                lp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
            out.append([lp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont)])
        assert "loralab" not in sys.modules
        print(json.dumps(out))
    """)
    res = subprocess.run([sys.executable, "-c", script, json.dumps(pairs)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    theirs = json.loads(res.stdout.strip().splitlines()[-1])
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, np.array(b, dtype=np.float32), atol=1e-5, rtol=0)


def test_every_mismatch_reported_at_once(run, tmp_path):
    root, _, _ = run
    bad = tmp_path / "bad"
    shutil.copytree(root / "run" / "adapter", bad)
    card = json.loads((bad / "loralab.json").read_text())
    card["base"]["fingerprint"] = "0000000000000000"
    card["vocab_size"] = 123
    (bad / "loralab.json").write_text(json.dumps(card))
    (bad / "adapter_model.safetensors").unlink()
    base = models.load("tiny-random", device="cpu", dtype="float32")
    with pytest.raises(AdapterError) as e:
        apply_adapters(base, [bad, tmp_path / "nowhere"])
    msg = str(e.value)
    for part in ("fingerprint 0000000000000000", "missing adapter_model.safetensors", "123 embedding rows",
                 "nowhere: no such adapter folder"):
        assert part in msg, part
    assert base.model.get_input_embeddings().weight.shape[0] == len(base.tokenizer)  # untouched on error


def test_two_adapters_load_under_names(run):
    root, _, _ = run
    base = models.load("tiny-random", device="cpu", dtype="float32")
    loaded = apply_adapters(base, [root / "run", root / "run" / "adapter"], names=["a", "b"])
    assert set(loaded.model.peft_config) == {"a", "b"} and loaded.model.active_adapter == "a"
    pairs = _pairs(loaded.tokenizer)
    a = token_logprobs(loaded.model, pairs)
    loaded.model.set_adapter("b")
    b = token_logprobs(loaded.model, pairs)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.logprobs, y.logprobs)
    assert torch.isfinite(torch.tensor(np.concatenate([x.logprobs for x in a]))).all()
