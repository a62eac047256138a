"""The inspector mounted by `loralab serve` at /inspect, on the tiny model and a registry."""

from __future__ import annotations

import httpx
import pytest
from _serve_util import start_server, stop_server
from inspect_support import make_adapter

PROMPT, TEXT = "Who won the game on Sunday?", "The Bears won it by three points."


@pytest.fixture(scope="module")
def served(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("inspect-serve")
    make_adapter(tiny, root / "registry" / "sport", seed=1)
    proc, url = start_server("--model", "tiny-random", "--device", "cpu", "--dtype", "float32",
                             "--registry", str(root / "registry"), timeout=180, cwd=root)
    try:
        yield url
    finally:
        stop_server(proc)


def test_serve_mounts_the_inspector(served):
    page = httpx.get(served + "/inspect/")
    assert page.status_code == 200 and "loralab inspector" in page.text
    st = httpx.get(served + "/inspect/api/state").json()
    assert st["model"] == "tiny-random" and "sport" in st["adapters"]
    f = httpx.post(served + "/inspect/api/field", json={"prompt": PROMPT, "continuation": TEXT,
                                                        "adapters": {"sport": 1.0}}, timeout=120)
    assert f.status_code == 200 and len(f.json()["kl"]) == 8 and max(f.json()["kl"]) > 0
    bad = httpx.post(served + "/inspect/api/field", json={"prompt": PROMPT, "continuation": TEXT,
                                                          "adapters": {"sport": 9}}, timeout=60)
    body = bad.json()
    message = body.get("detail") or body["error"]["message"]  # the server's own error shape
    assert bad.status_code == 400 and "between 0 and 2" in message
    # the OpenAI-compatible API beside it still answers
    assert httpx.get(served + "/v1/models").status_code == 200
