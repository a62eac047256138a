"""Greedy generation: the contiguous head input changes speed only, never the tokens."""

from __future__ import annotations

import copy

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
        with_hook = generate_ids(loaded, inputs, max_new_tokens=6)
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
