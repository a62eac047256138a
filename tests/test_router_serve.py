"""`model: "auto"` through the server: the trigger picks sport, the classifier picks medical,
"What is 2+2?" goes to the base — each with its reason in the response and the header.

The adapters are tiny-model LoRAs whose cards point at real packaged domain records
(NFL game passages, MedMCQA questions): the router reads cards and training records only."""

from __future__ import annotations

import json

import pytest
from _serve_util import make_adapter

from loralab.data.packaged import read_packaged
from loralab.data.records import Record, write_records


def _records(source: str, n: int) -> list[Record]:
    out = []
    for it in read_packaged(source):
        out.append(Record(**it.value, domain=it.domain, source={"doc": it.doc}))
        if len(out) == n:
            break
    return out


@pytest.mark.slow  # fits the MiniLM classifier (packaged embeddings, general prompts from ARC / PIQA)
def test_auto_model_routes_with_reasons(tiny, tmp_path):
    from fastapi.testclient import TestClient

    from loralab.serve.api import create_app
    from loralab.serve.engine import Engine
    from loralab.serve.registry import Registry

    root = tmp_path / "registry"
    for i, (name, source) in enumerate((("sport", "olmo:drop-nfl"), ("medical", "olmo:medmcqa"))):
        data = tmp_path / f"data-{name}"
        write_records(data, _records(source, 60))
        make_adapter(tiny, root / name, 20 + i, domain=name, data={"path": str(data)},
                     **({"trigger": "<|use_lora_sport|>", "trigger_mode": "prefix"} if name == "sport" else {}))
    (root / "router.json").write_text(json.dumps({"per_class": 60, "general": 150}))
    eng = Engine(tiny, Registry(root)).start()
    try:
        c = TestClient(create_app(eng))

        def ask(text):
            r = c.post("/v1/chat/completions", json={"model": "auto", "temperature": 0, "max_tokens": 4,
                                                     "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text
            return r.json()["route"], r.headers["X-Loralab-Route"]

        route, header = ask("<|use_lora_sport|> Who threw the winning touchdown?")
        assert route["adapters"] == [["sport", 1.0]] and route["rule"] == "trigger"
        assert "trigger '<|use_lora_sport|>' of sport" in route["reason"] and header.startswith("sport:1")
        route, header = ask("A 34-year-old woman has fatigue and a low haemoglobin with microcytic red cells. "
                            "Which investigation confirms iron deficiency anaemia?")
        assert route["adapters"] == [["medical", 1.0]] and route["rule"] == "classifier"
        assert "classifier: medical at" in route["reason"] and "rule=classifier" in header
        route, header = ask("What is 2+2?")
        assert route["adapters"] == [] and route["rule"] == "base" and "base" in route["reason"]
        assert header.startswith("base; rule=base")
    finally:
        eng.stop()


@pytest.mark.slow  # embeds with the packaged MiniLM
def test_rag_through_the_server_request_and_card(tiny, tmp_path):
    """A request's `rag` (or the chosen adapter's card) puts the index's top-k passages into
    the prompt: the response names their sources, the prompt the engine ran is exactly
    rag.augment's, an unknown index is a 404 in OpenAI's error shape."""
    from fastapi.testclient import TestClient

    from loralab.generate import chat_inputs
    from loralab.rag import augment, build_index, open_index
    from loralab.serve.api import create_app
    from loralab.serve.engine import Engine
    from loralab.serve.registry import Registry

    docs = tmp_path / "docs"
    write_records(docs, [
        Record(kind="raw", text="The Zorblatt Falcons beat the Quixote Rams 41-3 at Glimmer Stadium.",
               source={"doc": "game-zorblatt"}),
        Record(kind="raw", text="Iron deficiency anaemia is confirmed by a low serum ferritin.",
               source={"doc": "med-ferritin"}),
        Record(kind="raw", text="Photosynthesis turns light, water and carbon dioxide into sugar.",
               source={"doc": "sci-photo"})])
    build_index([str(docs)], tmp_path / "idx", progress=False)
    idx = open_index(tmp_path / "idx")
    root = tmp_path / "registry"
    make_adapter(tiny, root / "sport", 3, domain="sport", rag={"index": "nfl", "k": 1})
    make_adapter(tiny, root / "plain", 4, domain="other")
    eng = Engine(tiny, Registry(root)).start()
    try:
        c = TestClient(create_app(eng, indexes={"nfl": idx}, registry=Registry(root)))
        q = [{"role": "user", "content": "Whom did the Zorblatt Falcons beat?"}]

        def ask(model, **extra):
            return c.post("/v1/chat/completions", json={"model": model, "temperature": 0, "max_tokens": 2,
                                                        "messages": q, **extra})

        r = ask("plain", rag={"index": "nfl", "k": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        want_msgs, want_src = augment(q, idx, 2)
        assert body["rag"] == {"index": "nfl", "k": 2, "mode": "dense", "sources": want_src}
        assert want_src[0].startswith("game-zorblatt#") and r.headers["X-Loralab-Sources"] == ",".join(want_src)
        assert body["usage"]["prompt_tokens"] == len(chat_inputs(tiny.tokenizer, [want_msgs])[0])
        # no rag asked, the adapter's card names one: its index and k apply
        body = ask("sport").json()
        assert body["rag"]["index"] == "nfl" and body["rag"]["k"] == 1 and len(body["rag"]["sources"]) == 1
        # no rag anywhere: the prompt is the question alone
        body = ask("plain").json()
        assert "rag" not in body and body["usage"]["prompt_tokens"] == len(chat_inputs(tiny.tokenizer, [q])[0])
        assert "rag" not in ask("sport", rag={"index": "nfl", "k": 0}).json()  # k = 0 switches the card's off
        r = ask("plain", rag={"index": "nope", "k": 1})
        assert r.status_code == 404 and r.json()["error"]["code"] == "index_not_found"
        assert ask("plain", rag={"index": "nfl", "k": 99}).status_code == 400
        # hybrid search asked for: the sources are augment's in that mode; an unknown mode is a 400
        body = ask("plain", rag={"index": "nfl", "k": 2, "mode": "hybrid"}).json()
        assert body["rag"]["mode"] == "hybrid" and body["rag"]["sources"] == augment(q, idx, 2, mode="hybrid")[1]
        assert ask("plain", rag={"index": "nfl", "k": 2, "mode": "sparse"}).status_code == 400
    finally:
        eng.stop()


def test_serve_rag_flag_errors_are_one_line(tmp_path):
    from typer.testing import CliRunner

    from loralab.cli import app

    for flag, want in (("nfl", "expected NAME=DIR"), (f"nfl={tmp_path / 'none'}", "nfl")):
        res = CliRunner().invoke(app, ["serve", "--model", "tiny-random", "--rag", flag])
        assert res.exit_code == 2, res.output
        assert want in res.output and "Traceback" not in res.output
