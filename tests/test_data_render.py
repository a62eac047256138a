"""Render formats keep prompt/response apart; json and yaml round-trip records exactly."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.records import Record, write_records
from loralab.data.render import FORMATS, parse, render

# any text but lone surrogates (not encodable as UTF-8); must have a non-blank character
text = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=60).filter(lambda s: s.strip())
opt = st.none() | st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)

raw = st.builds(lambda t: Record(kind="raw", text=t), text)
qa = st.builds(lambda q, a, c: Record(kind="qa", question=q, answer=a, context=c), text, text, opt)
ins = st.builds(lambda i, x, o: Record(kind="instruction", instruction=i, input=x, output=o), text, opt, text)


@st.composite
def chat(draw):
    n = draw(st.integers(0, 2))
    msgs = [{"role": "system", "content": draw(text)}] if draw(st.booleans()) else []
    for _ in range(n):
        msgs += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    msgs += [{"role": "user", "content": draw(text)}, {"role": "assistant", "content": draw(text)}]
    return Record(kind="chat", messages=msgs)


records = raw | qa | ins | chat()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records, st.sampled_from(["json", "yaml"]))
def test_structured_round_trip_is_lossless(rec, fmt):
    r = render(rec, fmt)
    back = parse(r.prompt + r.response, fmt)
    assert back.content() == rec.content() and back.id == rec.id and back.kind == rec.kind
    assert r.response  # the response value is never folded into the prompt


@settings(max_examples=60, deadline=None)
@given(records)
def test_json_yaml_json_round_trip(rec):
    via_yaml = parse(render(parse(render(rec, "json").text, "json"), "yaml").text, "yaml")
    assert via_yaml.id == rec.id


def test_prompt_response_split_per_format(tiny):
    q = Record(kind="qa", question="Who won?", answer="The Lions, 27-20.", context="The Lions beat the Bears 27-20.")
    a = render(q, "alpaca")
    assert a.prompt == "### Instruction:\nWho won?\n\n### Input:\nThe Lions beat the Bears 27-20.\n\n### Response:\n"
    assert a.response == "The Lions, 27-20."
    p = render(q, "plain")
    assert p.prompt == "Who won?\n\nThe Lions beat the Bears 27-20.\n\n" and p.response == q.answer
    j = render(q, "json")
    assert j.response == json.dumps(q.answer) + "\n}" and json.loads(j.text)["answer"] == q.answer
    y = render(q, "yaml")
    assert y.prompt.endswith("answer:") and y.response.strip() == "The Lions, 27-20."
    c = render(q, "chat", tiny.tokenizer)
    assert c.prompt.rstrip().endswith("assistant") and c.response.startswith("The Lions, 27-20.")
    r = Record(kind="raw", text="Just text.")
    for fmt in ("alpaca", "plain", "chat"):
        assert render(r, fmt, tiny.tokenizer) == render(r, "plain")  # raw: whole-text loss, no prompt
        assert render(r, fmt, tiny.tokenizer).response == "Just text."
    ins = Record(kind="instruction", instruction="Add.", output="3")
    assert render(ins, "alpaca").prompt == "### Instruction:\nAdd.\n\n### Response:\n"


def test_multi_turn_chat_alpaca_keeps_history():
    rec = Record(kind="chat", messages=[{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                        {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}])
    r = render(rec, "alpaca")
    assert r.prompt == "### Instruction:\na\n\n### Response:\nb\n\n### Instruction:\nc\n\n### Response:\n"
    assert r.response == "d"


def test_parse_rejects_non_records():
    with pytest.raises(ValueError):
        parse('{"foo": 1}', "json")
    with pytest.raises(ValueError):
        parse("x", "alpaca")


def test_cli_render_writes_every_record(tmp_path):
    recs = [Record(kind="qa", question="Q?", answer="A."), Record(kind="raw", text="Body.")]
    write_records(tmp_path / "recs", recs)
    out = tmp_path / "r.jsonl"
    res = CliRunner().invoke(app, ["data", "render", str(tmp_path / "recs"), "--fmt", "yaml", "--out", str(out)])
    assert res.exit_code == 0, res.output
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [parse(r["prompt"] + r["response"], "yaml").id for r in rows] == [r.id for r in recs]
    assert set(FORMATS) == {"chat", "alpaca", "json", "yaml", "plain"}
