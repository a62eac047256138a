"""Server abuse (loopback only, bounded in time and count): what a hostile or careless client
does to `loralab serve` — huge max_tokens and n, unknown adapters, path traversal and pickle
files in load_lora_adapter, slow-loris connections, a storm above the queue limit, load/unload
races with requests in flight. The server keeps answering healthy requests, returns no 5xx,
and its memory comes back to its baseline."""

from __future__ import annotations

import asyncio
import os
import random
import shutil
import socket
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from conftest import FULL

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _serve_util import make_adapter, rss_bytes, start_server, stop_server  # noqa: E402

KEY = "abuse-key"
H = {"Authorization": f"Bearer {KEY}"}
STORM = 12.0 if FULL else 5.0


@pytest.fixture(scope="module")
def registry(tiny, tmp_path_factory):
    root = tmp_path_factory.mktemp("abuse-registry")
    for i, n in enumerate(["sport", "medical"]):
        make_adapter(tiny, root / n, 30 + i, domain=n)
    return root


@pytest.fixture(scope="module")
def server(registry):
    proc, url = start_server("--model", "tiny-random", "--device", "cpu", "--dtype", "float32",
                             "--registry", str(registry), "--api-key", KEY, "--max-batch", "4",
                             "--max-queue", "6", "--max-tokens", "32", "--max-prompt-tokens", "128",
                             "--max-body-bytes", "8000")
    yield proc, url
    stop_server(proc)


def _healthy(url: str) -> None:
    r = httpx.post(url + "/v1/completions", headers=H, timeout=60,
                   json={"model": "sport", "prompt": "a b", "max_tokens": 3, "temperature": 0})
    assert r.status_code == 200, r.text


def test_limits_refuse_with_4xx(server, registry, tmp_path, figures):
    url = server[1]
    bad_dir = registry / "evil_pickle"
    bad_dir.mkdir()
    torch.save({"x": torch.zeros(1)}, bad_dir / "adapter_model.bin")
    (bad_dir / "adapter_config.json").write_text("{}")
    link = registry / "link_out"
    os.symlink(tmp_path, link)
    cases = [
        ("/v1/completions", {"model": "sport", "prompt": "x", "max_tokens": 10**9}),
        ("/v1/completions", {"model": "sport", "prompt": "x", "max_tokens": 4, "n": 10**6}),
        ("/v1/completions", {"model": "sport", "prompt": "x", "max_tokens": -1}),
        ("/v1/chat/completions", {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}),
        ("/v1/chat/completions", {"model": "sport", "messages": "not a list"}),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(registry / ".." / ".." / "etc")}),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/etc/passwd"}),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(bad_dir)}),
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": str(link)}),
        ("/v1/load_lora_adapter", {"lora_name": "../../x", "lora_path": str(registry / "sport")}),
        ("/v1/unload_lora_adapter", {"lora_name": "never-loaded"}),
    ]
    for path, body in cases:
        r = httpx.post(url + path, json=body, headers=H, timeout=60)
        assert 400 <= r.status_code < 500, (path, body, r.status_code, r.text)
        assert r.json()["error"]["message"], r.text
    _healthy(url)
    shutil.rmtree(bad_dir)
    link.unlink()
    figures("server_abuse_limits", cases=len(cases), refused_4xx=len(cases), server_errors=0)


def _slow_loris(url: str, n: int) -> list[socket.socket]:
    """`n` connections that send half a request and then nothing."""
    host, port = url.removeprefix("http://").split(":")
    socks = []
    for _ in range(n):
        s = socket.create_connection((host, int(port)), timeout=5)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n"
                  b"Content-Type: application/json\r\n\r\n{\"model\": ")
        socks.append(s)
    return socks


async def _storm(url: str, seconds: float, clients: int) -> dict:
    stats = {"ok": 0, "429": 0, "404": 0, "5xx": 0, "other": 0, "retry_after": 0}
    end = time.time() + seconds

    async def one(i: int):
        rnd = random.Random(i)
        async with httpx.AsyncClient(base_url=url, headers=H, timeout=120) as c:
            while time.time() < end:
                body = {"model": rnd.choice(["tiny-random", "sport", "medical", "temp"]),
                        "prompt": "w " * rnd.randint(1, 20), "max_tokens": rnd.randint(1, 12)}
                try:
                    r = await c.post("/v1/completions", json=body)
                except httpx.HTTPError:
                    stats["other"] += 1
                    continue
                if r.status_code == 200:
                    stats["ok"] += 1
                elif r.status_code == 429:
                    stats["429"] += 1
                    stats["retry_after"] += "retry-after" in r.headers
                    await asyncio.sleep(0.2)
                elif r.status_code == 404:  # "temp" between an unload and a load
                    stats["404"] += 1
                elif r.status_code >= 500:
                    stats["5xx"] += 1
                else:
                    stats["other"] += 1

    async def churn(registry_path: str):
        async with httpx.AsyncClient(base_url=url, headers=H, timeout=120) as c:
            while time.time() < end:
                await c.post("/v1/load_lora_adapter", json={"lora_name": "temp", "lora_path": registry_path})
                await asyncio.sleep(0.05)
                await c.post("/v1/unload_lora_adapter", json={"lora_name": "temp"})
                await asyncio.sleep(0.05)

    await asyncio.gather(*(one(i) for i in range(clients)), churn(_storm.registry))
    return stats


def test_storm_above_the_queue_with_slow_loris_and_load_unload_races(server, registry, figures):
    proc, url = server
    temp = registry / "temp"
    shutil.copytree(registry / "medical", temp)
    _storm.registry = str(temp)
    asyncio.run(_storm(url, 1.0, 2))  # warm
    before = rss_bytes(proc.pid)
    loris = _slow_loris(url, 8)
    try:
        stats = asyncio.run(_storm(url, STORM, 24))
        _healthy(url)  # still answering while the half-open connections hang on
    finally:
        for s in loris:
            s.close()
    deadline = time.time() + 30
    while time.time() < deadline and "loralab_running_requests 0" not in httpx.get(url + "/metrics").text:
        time.sleep(0.2)
    after = rss_bytes(proc.pid)
    assert stats["5xx"] == 0 and stats["other"] == 0, stats
    assert stats["ok"] > 0 and stats["429"] > 0 and stats["retry_after"] == stats["429"], stats
    assert after <= before * 1.10, (before, after)
    shutil.rmtree(temp)
    figures("server_abuse", clients=24, slow_loris=8, seconds=STORM, answered=stats["ok"],
            rejected_429=stats["429"], races_404=stats["404"], server_errors=0,
            rss_growth_pct=round(100 * (after - before) / before, 1))
