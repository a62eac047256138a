"""A SentencePiece-BPE vocabulary rebuilt for `tokenizers` encodes exactly like `sentencepiece`:
on a hand-made vocabulary (merge order, byte fallback, user-defined pieces) and on the packaged
Gemma 3 270M GGUF (real text), whose model then loads and predicts text as a language model does."""

from __future__ import annotations

import math
import random

import pytest

from loralab import gguf_tokenizer as gt


def tiny_vocab() -> gt.Vocab:
    pieces = [("<pad>", 0.0, gt.CONTROL), ("<eos>", 0.0, gt.CONTROL), ("<bos>", 0.0, gt.CONTROL),
              ("<unk>", 0.0, gt.CONTROL), ("  ", 0.0, gt.USER_DEFINED), ("\n", 0.0, gt.USER_DEFINED)]
    pieces += [(f"<0x{b:02X}>", 0.0, gt.BYTE) for b in range(256)]
    merged = ["▁t", "he", "▁the", "in", "ng", "ing", "▁a", "▁th", "er", "▁in", "▁them", "an", "▁an", "▁and", "nd",
              "ed", "▁thing", "th"]
    chars = ["▁"] + [chr(c) for c in range(ord("a"), ord("z") + 1)]
    pieces += [(p, -float(i), gt.NORMAL) for i, p in enumerate(merged)]
    pieces += [(c, -100.0 - i, gt.NORMAL) for i, c in enumerate(chars)]
    return gt.Vocab(pieces=[p for p, _, _ in pieces], scores=[s for _, s, _ in pieces], types=[t for *_, t in pieces],
                    bos=2, eos=1, unk=3, pad=0, add_bos=True)


def test_rebuilt_bpe_encodes_like_sentencepiece_on_a_hand_made_vocabulary():
    v = tiny_vocab()
    tok, ref = gt.build(v), gt.spm_reference(v)
    rng = random.Random(0)
    alphabet = list("theingadrm ") + ["  ", "\n", "é", "Z", "7"]
    texts = ["the thing and them", "  leading", "a\n\nb", "café 7"] + [
        "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40))) for _ in range(300)]
    for t in texts:
        ids = tok(t, add_special_tokens=False)["input_ids"]
        assert ids == ref.encode(t), t
        assert tok.decode(ids) == t
    assert tok("the")["input_ids"][0] == v.bos  # BOS added as the GGUF says
    # merges follow the joined piece's score: "▁the" (score -2) before "▁th" (-7) can form
    assert gt.merges(v)[:3] == [("▁", "t"), ("h", "e"), ("▁t", "he")]


@pytest.fixture(scope="module")
def gemma():
    from loralab import models

    try:
        src = models.gguf_path(models.GEMMA)
    except models.ModelError as e:
        pytest.skip(str(e))
    return src, models.load(models.GEMMA, device="cpu", dtype="float32")


def test_gemma_tokenizer_equals_sentencepiece_and_the_model_reads_text(gemma):
    import torch

    from loralab.data.packaged import read_packaged

    src, loaded = gemma
    ref = gt.spm_reference(gt.read_vocab(src))
    texts = [it.value if isinstance(it.value, str) else " ".join(str(x) for x in it.value.values())
             for name in ("olmo:drop-nfl", "olmo:medmcqa") for it in list(read_packaged(name))[:40]]
    texts += ["  two spaces,\n\nnew lines\tand a tab", "naïve café 日本語 🙂 12.5%"]
    tok = loaded.tokenizer
    for t in texts:
        assert tok(t, add_special_tokens=False)["input_ids"] == ref.encode(t), t[:60]
    ids = tok(texts[0][:600], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        loss = float(loaded.model(ids, labels=ids).loss)
    assert math.isfinite(loss) and math.exp(loss) < 40  # a language model, not shuffled weights (uniform: 262,144)
    assert not tok.chat_template  # a base model: none in the GGUF, none invented


def test_a_base_scorer_reads_prompted_records_as_plain_text(gemma):
    """No chat template: IFD is scored on the plain rendering after BOS (no turn markers the
    base model never learnt to predict), and equals a direct forward pass."""
    import torch

    from loralab.data.records import Record
    from loralab.score import ScoreConfig, score_records

    _, loaded = gemma
    rec = Record(kind="qa", question="Which team won?", context="The Bears beat the Packers 24-10 on Sunday.",
                 answer="The Bears")
    out = score_records([(0, rec)], ScoreConfig(model="gemma3-270m", cache=False, progress=False), loaded=loaded)
    sc, tok = out.records[0].meta["score"], loaded.tokenizer
    assert out.stats["render"] == "plain" and sc["render"] == "plain"

    def nll(prompt: str) -> float:
        ctx = [tok.bos_token_id] + tok.encode(prompt, add_special_tokens=False)
        cont = tok.encode(prompt + "The Bears", add_special_tokens=False)[len(ctx) - 1:]
        ids = torch.tensor([ctx + cont])
        with torch.no_grad():
            lp = torch.log_softmax(loaded.model(ids).logits[0].float(), -1)
        return float(-lp[len(ctx) - 1:-1].gather(1, ids[0, len(ctx):, None]).mean())

    cond = nll("Which team won?\n\nThe Bears beat the Packers 24-10 on Sunday.\n\n")
    assert math.isclose(sc["loss_cond"], cond, rel_tol=1e-4) and math.isclose(sc["loss_resp"], nll(""), rel_tol=1e-4)
    assert math.isclose(sc["ifd"], cond / nll(""), rel_tol=1e-4)
