"""Any mix of adapters in one load: added trigger tokens, aLoRA, DoRA and different ranks together.

Each adapter of a mixed load answers exactly as it does when loaded alone (same logits
on the same input), whatever the order they are named in; `loralab adapters` lists
them with their cards and `generate --compare` answers with the base and each one.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from typer.testing import CliRunner

from loralab import models
from loralab.adapters import AdapterError, apply_adapters, describe, find_adapters
from loralab.cli import app
from loralab.config import TrainConfig
from loralab.data.records import Record, write_records
from loralab.train import train

PREFIX, ALORA = "<|use_lora_bees|>", "<|bees|>"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Trained on the tiny model: a prefix-trigger adapter (adds a token), an aLoRA adapter;
    made with PEFT directly: a DoRA adapter of rank 2 and a LoRA adapter of rank 8."""
    from peft import LoraConfig, get_peft_model

    root = tmp_path_factory.mktemp("mix")
    write_records(root / "data", [Record(kind="qa", question=f"How many frames in hive {i}?",
                                         answer=f"Hive {i} has {i + 5} frames.", source={"doc": f"h{i}"})
                                  for i in range(8)])
    common = dict(model="tiny-random", data=str(root / "data"), device="cpu", dtype="float32", steps=1, lr=5e-2,
                  max_seq_len=64, eval_frac=0.25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        train(TrainConfig(out=str(root / "prefix"), trigger=PREFIX, rank=4, role="knowledge",
                          keywords=["hive"], **common), progress=False)
        train(TrainConfig(out=str(root / "alora"), trigger=ALORA, trigger_mode="alora", rank=4, **common),
              progress=False)
        # r8 is saved without task_type, as plain PEFT code often saves adapters
        for name, kw in (("dora", dict(r=2, use_dora=True, task_type="CAUSAL_LM")), ("r8", dict(r=8))):
            base = models.load("tiny-random", device="cpu", dtype="float32")
            torch.manual_seed(1)
            pm = get_peft_model(base.model, LoraConfig(target_modules="all-linear", init_lora_weights=False, **kw))
            pm.save_pretrained(root / name)
    return root


def _logits(loaded, ids: list[int]) -> torch.Tensor:
    """(T, V) raw logits through the PEFT model's forward (which feeds aLoRA its offsets)."""
    with torch.no_grad():
        return loaded.model(input_ids=torch.tensor([ids])).logits[0].float()


def _fresh():
    base = models.load("tiny-random", device="cpu", dtype="float32")
    torch.manual_seed(0)  # the rows a resize adds are sampled: the same seed gives the same rows
    return base


def test_mixed_load_matches_each_adapter_alone_in_any_order(folders):
    names = ["prefix", "alora", "dora", "r8"]
    tok = apply_adapters(_fresh(), [folders / "prefix"]).tokenizer
    text = f"How many frames?\n{ALORA} Hive 3"
    ids = {"prefix": tok.encode(f"{PREFIX} {text}", add_special_tokens=False)}  # carries the added token
    ids.update({n: tok.encode(text, add_special_tokens=False) for n in names[1:]})
    assert tok.convert_tokens_to_ids(PREFIX) in ids["prefix"]
    base = _logits(_fresh(), ids["alora"])
    alone = {n: _logits(apply_adapters(_fresh(), [folders / n]), ids[n]) for n in names}
    for n in names[1:]:  # every adapter changes something: the comparison below is not base == base
        assert not torch.equal(alone[n], base), n
    assert torch.equal(alone["alora"][:5], base[:5])  # aLoRA acts only from its invocation (position 5) on
    for order in (names, names[::-1]):
        mixed = apply_adapters(_fresh(), [folders / n for n in order])
        assert mixed.model.active_adapter == order[0] and set(mixed.model.peft_config) == set(order)
        for n in order:
            mixed.model.set_adapter(n)
            got = _logits(mixed, ids[n])
            torch.testing.assert_close(got[:, : alone[n].shape[1]], alone[n], rtol=0, atol=0, msg=n)


def test_what_cannot_be_combined_is_refused_before_loading(folders, tmp_path):
    import shutil

    other = tmp_path / "other"
    shutil.copytree(folders / "prefix" / "adapter", other)
    tj = other / "tokenizer.json"
    tj.write_text(tj.read_text().replace(PREFIX, "<|use_lora_wasps|>"))  # same id, another token
    base = _fresh()
    with pytest.raises(AdapterError) as e:
        apply_adapters(base, [folders / "prefix", other])
    assert "adds different tokens than another adapter in the same load" in str(e.value)
    assert base.model.get_input_embeddings().weight.shape[0] == len(base.tokenizer)  # nothing touched


def test_adapters_command_lists_cards(folders):
    found = [str(p.relative_to(folders)) for p in find_adapters(folders)]
    assert found == ["alora/adapter", "dora", "prefix/adapter", "r8"]
    rows = {r["path"].split("/")[-2 if r["path"].endswith("adapter") else -1]: r
            for r in map(describe, find_adapters(folders))}
    assert (rows["prefix"]["trigger"], rows["prefix"]["trigger_mode"]) == (PREFIX, "prefix")
    assert (rows["prefix"]["role"], rows["prefix"]["keywords"]) == ("knowledge", ["hive"])
    assert (rows["alora"]["trigger"], rows["alora"]["trigger_mode"]) == (ALORA, "alora")
    assert (rows["dora"]["method"], rows["dora"]["rank"], rows["r8"]["rank"]) == ("dora", 2, 8)
    assert rows["prefix"]["steps"] == 1 and rows["prefix"]["data"] == str(folders / "data")
    res = CliRunner().invoke(app, ["adapters", str(folders)])
    assert res.exit_code == 0 and "4 adapter folders" in res.stdout
    for word in (PREFIX, "(prefix)", ALORA, "(alora)", "knowledge [hive]", "dora"):
        assert word in res.stdout, word


def test_generate_compare_and_trigger_notes(folders):
    res = CliRunner().invoke(app, ["generate", f"{PREFIX} Frames?", "Frames?", "-m", "tiny-random",
                                   "--max-new-tokens", "2", "--device", "cpu",
                                   "--compare", str(folders / "prefix"), "--compare", str(folders / "alora")])
    assert res.exit_code == 0, res.stderr
    assert res.stderr.splitlines() == [
        f"note: adapter prefix has the trigger {PREFIX} (prefix); carried by prompt 1 only",
        f"note: adapter alora has the trigger {ALORA} (alora); no prompt carries it: put {ALORA} in the prompt "
        "for the behaviour it was trained for (an aLoRA adapter does nothing without it)"]
    header = next(x for x in res.stdout.splitlines() if "prompt" in x)
    assert [c.strip() for c in header.strip("┃ ").split("┃")] == ["prompt", "base", "prefix", "alora"]
