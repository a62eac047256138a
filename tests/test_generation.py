"""Generation: the static-cache backend gives transformers' greedy tokens; the contiguous head
input of the transformers backend changes speed only, never the tokens."""

from __future__ import annotations

import copy

import pytest
import torch

from loralab.generate import chat_inputs, contiguous_head, generate_ids


def test_contiguous_head_input_gives_the_same_tokens_and_leaves_no_hook(tiny):
    loaded = copy.copy(tiny)
    loaded.model = copy.deepcopy(tiny.model).to(torch.bfloat16)
    inputs = chat_inputs(loaded.tokenizer, ["Who won the game?", "Name a bone of the arm, please, briefly."])
    head = loaded.model.get_output_embeddings()
    given, seen = [], []  # the head's input as generate hands it over, and as the head computes on it
    before = head.register_forward_pre_hook(lambda _m, a: given.append(a[0].is_contiguous()))
    after = head.register_forward_hook(lambda _m, a, _o: seen.append(a[0].is_contiguous()))
    try:
        with_hook = generate_ids(loaded, inputs, max_new_tokens=6, backend="hf")
    finally:
        before.remove(), after.remove()
    assert given[0] is False  # the prompt's last position arrives as a strided view...
    assert seen and all(seen)  # ...and the projection runs on contiguous inputs only
    assert not head._forward_pre_hooks and not head._forward_hooks  # nothing left behind
    out = loaded.model.generate(input_ids=torch.tensor([inputs[0]]), max_new_tokens=6, do_sample=False,
                                pad_token_id=loaded.tokenizer.pad_token_id)
    first = out[0, len(inputs[0]):].tolist()
    eos = loaded.tokenizer.eos_token_id
    assert with_hook[0] == (first[: first.index(eos)] if eos in first else first)


def _hf_one_by_one(loaded, inputs, n):
    """transformers' greedy answer of each input alone (no padding), cut at EOS."""
    eos, out = loaded.tokenizer.eos_token_id, []
    for x in inputs:
        with torch.inference_mode():
            row = loaded.model.generate(input_ids=torch.tensor([x]), attention_mask=torch.ones(1, len(x), dtype=torch.long),
                                        max_new_tokens=n, do_sample=False, pad_token_id=eos)[0, len(x):].tolist()
        out.append(row[: row.index(eos)] if eos in row else row)
    return out


def test_static_backend_gives_transformers_greedy_tokens_and_seeded_samples(tiny):
    prompts = ["Who won the game?", "Name a bone of the arm, please, briefly.", "Hi"]
    inputs = chat_inputs(tiny.tokenizer, prompts)
    got = generate_ids(tiny, inputs, max_new_tokens=8, backend="static")
    assert got == _hf_one_by_one(tiny, inputs, 8) == generate_ids(tiny, inputs, max_new_tokens=8)  # auto = static
    eng = tiny.__dict__["_static_engine"][2]
    twin = copy.deepcopy(tiny)  # a copy leaves the decoder (and its lock) behind and builds its own
    assert "_static_engine" not in twin.__dict__ and "_static_engine" not in copy.copy(tiny).__dict__
    assert generate_ids(twin, inputs, max_new_tokens=8) == got
    assert generate_ids(tiny, inputs[:1], max_new_tokens=8) == got[:1]
    assert tiny.__dict__["_static_engine"][2] is eng  # kept while the weights stay the same
    # sampling: input i draws from a generator seeded seed + i
    twice = generate_ids(tiny, [inputs[0]] * 2, max_new_tokens=12, temperature=1.0, seed=3)
    assert twice[0] != twice[1]
    assert generate_ids(tiny, [inputs[0]], max_new_tokens=12, temperature=1.0, seed=4) == twice[1:]
    with pytest.raises(ValueError, match="backend"):
        generate_ids(tiny, inputs, backend="vllm")


def test_static_backend_follows_weight_changes_and_leaves_peft_models_to_transformers(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    loaded = copy.copy(tiny)
    loaded.model = copy.deepcopy(tiny.model)
    loaded.__dict__.pop("_static_engine", None)
    x = chat_inputs(loaded.tokenizer, ["Who won the game?"])
    before = generate_ids(loaded, x, max_new_tokens=8)
    eng = loaded.__dict__["_static_engine"][2]
    with torch.no_grad():  # training changes weights in place: the engine's copies must not go stale
        w = loaded.model.model.norm.weight
        w.copy_(torch.linspace(-3.0, 3.0, w.numel()))
    after = generate_ids(loaded, x, max_new_tokens=8)
    assert loaded.__dict__["_static_engine"][2] is not eng and after == _hf_one_by_one(loaded, x, 8) != before
    peft = copy.copy(tiny)
    peft.model = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    peft.__dict__.pop("_static_engine", None)
    with pytest.raises(ValueError, match="static decoding does not support"):
        generate_ids(peft, x, max_new_tokens=4, backend="static")
    assert generate_ids(peft, x, max_new_tokens=8) == generate_ids(peft, x, max_new_tokens=8, backend="hf")
    assert "_static_engine" not in peft.__dict__


def test_a_hooked_or_patched_forward_goes_to_transformers(tiny):
    """A logit bias (a hook on the head, as the inspector adds) or a stacked adapter mix (patched
    linear forwards) changes the model's forward: generation must see it, so it leaves the static path."""
    from loralab.fastlora import _forwards

    loaded = copy.copy(tiny)
    loaded.model = copy.deepcopy(tiny.model)
    loaded.__dict__.pop("_static_engine", None)
    x = chat_inputs(loaded.tokenizer, ["Who won the game?"])
    plain = generate_ids(loaded, x, max_new_tokens=6)
    forced = plain[0][0] + 1
    head = loaded.model.get_output_embeddings()
    h = head.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor([forced]), 1e4))
    try:
        assert generate_ids(loaded, x, max_new_tokens=6) == [[forced] * 6]
        with pytest.raises(ValueError, match="forward is changed at lm_head"):
            generate_ids(loaded, x, max_new_tokens=6, backend="static")
    finally:
        h.remove()
    down = loaded.model.model.layers[0].mlp.down_proj
    with _forwards(loaded.model, [down], lambda self, t: torch.nn.functional.linear(t, 3.0 * self.weight)):
        patched = generate_ids(loaded, x, max_new_tokens=6)
        assert patched == generate_ids(loaded, x, max_new_tokens=6, backend="hf")
    assert generate_ids(loaded, x, max_new_tokens=6) == plain


@pytest.mark.slow
def test_static_backend_on_the_real_model_equals_transformers_one_prompt_at_a_time(smol):
    """SmolLM2 in its serving dtype: a batch through the static backend gives each prompt's greedy
    answer from transformers run alone, token for token."""
    inputs = chat_inputs(smol.tokenizer, ["What is the capital of France?", "Кто написал «Войну и мир»?",
                                          "Explain offside in one sentence."])
    smol.__dict__.pop("_static_engine", None)
    assert generate_ids(smol, inputs, max_new_tokens=24) == _hf_one_by_one(smol, inputs, 24)
    assert "_static_engine" in smol.__dict__  # the static path ran (nothing hooked on the model)
