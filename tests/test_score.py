"""Scoring: IFD against a hand computation, BOS and prompt masking, quarantine, cache, adapters."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch

from loralab.data.records import Record, write_records
from loralab.data.render import render
from loralab.io import iter_jsonl
from loralab.score import ScoreConfig, adapter_digest, empty_prompt_messages, prepare, score, score_records


def cfg(tmp_path, **kw) -> ScoreConfig:
    return ScoreConfig(model="tiny-random", cache_dir=str(tmp_path / "cache"), progress=False, **kw)


def naive_resp_logprobs(model, prompt_ids: list[int], resp_ids: list[int]) -> torch.Tensor:
    """Reference: one full forward with (T, V) logits, log-probs of the response tokens only."""
    full = torch.tensor([prompt_ids + resp_ids])
    with torch.no_grad():
        logits = model(input_ids=full).logits[0].double()  # (T, V)
    lp = torch.log_softmax(logits[:-1], dim=-1).gather(1, full[0, 1:, None])[:, 0]  # (T-1,)
    return lp[len(prompt_ids) - 1:]  # position j predicts token j+1


def scored(tmp_path, recs, tiny, **kw):
    src = tmp_path / "in"
    src.mkdir(exist_ok=True)
    write_records(src, recs)
    card = score(src, tmp_path / "out", cfg(tmp_path, **kw), loaded=tiny)
    return card, [Record.model_validate(r) for r in iter_jsonl(tmp_path / "out" / "records.jsonl")]


def test_ifd_equals_hand_computation(tiny, tmp_path):
    tok = tiny.tokenizer
    rec = Record(kind="qa", question="Which bone is the longest in the human body?", answer="The femur.")
    card, [out] = scored(tmp_path, [rec], tiny, cache=False)
    s = out.meta["score"]
    r = render(rec, "chat", tok)
    alone = render(Record(kind="chat", messages=empty_prompt_messages(
        [{"role": "user", "content": rec.question}, {"role": "assistant", "content": rec.answer}])), "chat", tok)
    assert alone.prompt.endswith("<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n")
    assert alone.response == r.response  # same markup around the response in both passes
    resp_ids = tok.encode(r.response, add_special_tokens=False)
    cond = naive_resp_logprobs(tiny.model, tok.encode(r.prompt, add_special_tokens=False), resp_ids)
    bare = naive_resp_logprobs(tiny.model, tok.encode(alone.prompt, add_special_tokens=False), resp_ids)
    lc, lr = -cond.mean().item(), -bare.mean().item()
    assert s["n_resp_tokens"] == len(resp_ids) == cond.numel()  # only response tokens are scored
    assert s["loss_cond"] == pytest.approx(lc, abs=1e-5)
    assert s["loss_resp"] == pytest.approx(lr, abs=1e-5)
    assert s["ifd"] == pytest.approx(lc / lr, abs=1e-5)
    assert s["ppl_cond"] == pytest.approx(math.exp(lc), rel=1e-5)
    assert s["ppl_resp"] == pytest.approx(math.exp(lr), rel=1e-5)
    assert s["model"] == tiny.fingerprint
    assert card["counts"] == {"read": 1, "kept": 1, "quarantined": 0, "reconciled": True}



def test_plain_rendering_for_a_scorer_without_chat_template(tiny, tmp_path):
    """render=plain (auto's choice for a base model's tokenizer): prompt paragraphs then the
    response after BOS, the response alone after BOS; its own cache key, never a chat score."""
    tok = tiny.tokenizer
    rec = Record(kind="qa", question="Which bone is the longest?", context="Anatomy quiz.", answer="The femur.")
    _, [chat] = scored(tmp_path, [rec], tiny)
    _, [plain] = scored(tmp_path, [rec], tiny, render="plain")
    s = plain.meta["score"]
    resp = tok.encode("The femur.", add_special_tokens=False)
    bos = [tok.bos_token_id]
    lc = -naive_resp_logprobs(tiny.model, bos + tok.encode("Which bone is the longest?\n\nAnatomy quiz.\n\n",
                                                            add_special_tokens=False), resp).mean().item()
    lr = -naive_resp_logprobs(tiny.model, bos, resp).mean().item()
    assert s["render"] == "plain" and "render" not in chat.meta["score"]
    assert s["loss_cond"] == pytest.approx(lc, abs=1e-5) and s["loss_resp"] == pytest.approx(lr, abs=1e-5)
    assert s["loss_cond"] != pytest.approx(chat.meta["score"]["loss_cond"], abs=1e-3)  # not served from the chat cache
    from loralab.score import render_mode

    assert render_mode("auto", tok) == "chat"
    bare = copy.copy(tok)
    bare.chat_template = None
    assert render_mode("auto", bare) == "plain" and render_mode("chat", bare) == "chat"

def test_bos_handling(tiny, tmp_path):
    tok = tiny.tokenizer
    im_start = tok.convert_tokens_to_ids("<|im_start|>")
    text = "The quarterback threw a touchdown pass in the fourth quarter."
    raw = Record(kind="raw", text=text)
    qa = Record(kind="qa", question="Who threw it?", answer="The quarterback.")
    is_raw, [(ctx, cont)] = prepare(raw, tok, 2048)
    assert is_raw and ctx == [tok.bos_token_id] and cont == tok.encode(text, add_special_tokens=False)
    _, [(c_ctx, _), (r_ctx, _)] = prepare(qa, tok, 2048)
    for ids in (c_ctx, r_ctx):  # the template opens with <|im_start|>: no second BOS in front
        assert ids[0] == im_start and ids[1] != im_start
    s = scored(tmp_path, [raw], tiny, cache=False)[1][0].meta["score"]
    ref = naive_resp_logprobs(tiny.model, [tok.bos_token_id], cont)
    assert s["n_tokens"] == len(cont)  # the first text token is scored, given BOS
    assert s["loss"] == pytest.approx(-ref.mean().item(), abs=1e-5)
    assert "ifd" not in s


def test_prompt_masking(tiny, tmp_path):
    a = Record(kind="qa", question="What is the capital of France?", answer="Paris is the capital.")
    b = Record(kind="qa", question="Name a large European city, please, in one sentence.",
               answer="Paris is the capital.")
    _, (sa, sb) = scored(tmp_path, [a, b], tiny, cache=False)
    sa, sb = sa.meta["score"], sb.meta["score"]
    assert sa["loss_resp"] == pytest.approx(sb["loss_resp"], abs=1e-6)  # the prompt never enters this pass
    assert sa["n_resp_tokens"] == sb["n_resp_tokens"]
    assert abs(sa["loss_cond"] - sb["loss_cond"]) > 1e-4  # ... but does condition the other one


def test_bad_input_is_quarantined(tiny, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    long_answer = " ".join(["word"] * 80)
    rows = [
        Record(kind="qa", question="Q?", answer="A fine answer.").to_json(),
        {"kind": "chat", "messages": [{"role": "user", "content": "no answer here"}]},
        {"kind": "chat", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}]},
        {"kind": "qa", "question": "Q?", "answer": ""},  # not a valid record
        Record(kind="instruction", instruction="Repeat.", output=long_answer).to_json(),
    ]
    with open(src / "records.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.write("{not json\n")
    card = score(src, tmp_path / "out", cfg(tmp_path, max_length=48, cache=False), loaded=tiny)
    q = list(iter_jsonl(tmp_path / "out" / "quarantine.jsonl"))
    reasons = sorted(x["reason"].split(":")[0] for x in q)
    assert card["counts"] == {"read": 6, "kept": 1, "quarantined": 5, "reconciled": True}
    assert reasons == ["empty response", "invalid record", "invalid record", "no response",
                       "response of 82 tokens exceeds the 48-token context window"]
    assert sorted(x["location"]["line"] for x in q) == [2, 3, 4, 5, 6]
    assert len(list(iter_jsonl(tmp_path / "out" / "records.jsonl"))) == 1


def test_cache_makes_rescoring_free(tiny, tmp_path):
    recs = [Record(kind="qa", question=f"What is {i} + {i}?", answer=f"It is {2 * i}.") for i in range(5)]
    recs.append(Record(kind="raw", text="A short raw passage."))
    calls = []
    hook = tiny.model.get_decoder().register_forward_hook(lambda *a: calls.append(1))
    try:
        card1, out1 = scored(tmp_path, recs, tiny)
        n1 = len(calls)
        card2, out2 = scored(tmp_path, recs, tiny)
    finally:
        hook.remove()
    assert n1 >= 1 and len(calls) == n1  # second run: zero forward passes
    assert (card1["computed"], card1["from_cache"]) == (6, 0)
    assert (card2["computed"], card2["from_cache"]) == (0, 6)
    assert [r.meta for r in out1] == [r.meta for r in out2]
    card3 = score(tmp_path / "in", tmp_path / "out3", cfg(tmp_path, max_length=1024), loaded=tiny)
    assert card3["computed"] == 6  # another window is another key


def test_adapter_changes_scores_and_key(tiny, tmp_path):
    from peft import LoraConfig, get_peft_model

    base = copy.deepcopy(tiny)
    lora = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(tmp_path / "adapter")
    rec = [Record(kind="qa", question="Who wrote Hamlet?", answer="Shakespeare.")]
    _, [plain] = scored(tmp_path, rec, tiny)
    card = score(tmp_path / "in", tmp_path / "out2", cfg(tmp_path, adapter=str(tmp_path / "adapter")), loaded=base)
    with_ad = Record.model_validate(next(iter_jsonl(tmp_path / "out2" / "records.jsonl")))
    assert card["computed"] == 1  # not served from the base model's cache entry
    assert with_ad.meta["score"]["adapter"] == adapter_digest(str(tmp_path / "adapter"))
    assert abs(with_ad.meta["score"]["loss_cond"] - plain.meta["score"]["loss_cond"]) > 1e-4


def test_score_records_one_engine_call(tiny, tmp_path, monkeypatch):
    from loralab import logprobs

    seen = []
    real = logprobs.token_logprobs
    monkeypatch.setattr(logprobs, "token_logprobs", lambda m, pairs, **kw: seen.append(len(pairs)) or real(m, pairs, **kw))
    recs = [(i + 1, Record(kind="qa", question=f"Q{i}?", answer=a)) for i, a in enumerate(["Yes.", "Yes.", "No.", "Maybe."])]
    recs.append((5, Record(kind="raw", text="Plain text.")))
    res = score_records(recs, cfg(tmp_path, cache=False), tiny)
    assert seen == [4 + 3 + 1]  # every pass of every record in one call; the two equal response-only pairs once
    s = [r.meta["score"] for r in res.records]
    assert len(s) == 5 and s[0]["loss_resp"] == s[1]["loss_resp"] and s[0]["loss_cond"] != s[1]["loss_cond"]


def test_out_must_not_be_the_input(tiny, tmp_path):
    write_records(tmp_path, [Record(kind="raw", text="Some text.")])
    with pytest.raises(ValueError, match="input folder"):
        score(tmp_path, tmp_path, cfg(tmp_path), loaded=tiny)


@pytest.mark.slow
def test_real_model_ifd_is_meaningful(smol, tmp_path):
    recs = [Record(kind="qa", question="What is the capital of France?", answer="The capital of France is Paris."),
            Record(kind="qa", question="Which vitamin deficiency causes scurvy?",
                   answer="Scurvy is caused by a lack of vitamin C."),
            Record(kind="qa", question="What is the chemical symbol for gold?",
                   answer="xkqz vvbrt pzzkl qwrtx mnbvc zxkql trpqz vbnmx")]
    _, out = scored(tmp_path, recs, smol, cache=False)
    france, scurvy, noise = (r.meta["score"] for r in out)
    assert france["ifd"] < 0.5 and scurvy["ifd"] < 0.7  # a helpful prompt makes the answer much easier
    assert noise["ifd"] > 0.9  # the prompt cannot explain noise
    assert noise["loss_resp"] > max(france["loss_resp"], scurvy["loss_resp"]) + 2
