"""Serving throughput and latency: loralab's mixed-adapter engine vs per-request adapter swapping.

    python benchmarks/serve.py                                 # SmolLM2-135M, 8 adapters, 8 clients, 20 s each
    python benchmarks/serve.py --model tiny-random --seconds 5 --clients 4   # a quick look
    python benchmarks/serve.py --latency                       # TTFT and p50/p99 under 1/4/8/32 clients,
                                                               # static decoder vs the transformers forward

Everything runs on loopback in one invocation, bounded by --seconds per scenario:
  (a) mixed    `loralab serve`, each request to one of 8 adapters at random
  (b) single   `loralab serve`, every request to the same adapter
  (c) swap     the usual alternative of single-adapter servers: per request, load the adapter
               from disk into the PEFT model, merge it, answer with HF `generate`, unmerge and
               drop it; one request at a time
  (d) hf-one   HF `generate` with one adapter resident (PEFT, no swapping), one request at a time:
               the single-adapter generate loop
N clients send completions (greedy, --max-tokens each) back to back for a fixed time;
the script prints requests, errors, generated tokens/s (and per core), p50/p99 latency and
the ratios a/b, a/c, a/d. The adapters are random rank-8 LoRA on all linear layers (seeded),
written as `loralab train` writes them; the model's dtype is the device policy's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

PROMPTS = ["The quarterback threw", "In the second half the team", "The patient was given",
           "A court ruled that", "The final score was", "Researchers found that the",
           "After the field goal", "The doctor explained how"]


def make_registry(spec: str, root: Path, n: int, rank: int) -> list[str]:
    import torch
    from peft import LoraConfig, get_peft_model

    from loralab import models
    from loralab.adapters import write_card

    loaded = models.load(spec)
    pm = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    names = []
    for i in range(n):
        torch.manual_seed(i)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_A" in name:
                    torch.nn.init.kaiming_uniform_(p, a=5 ** 0.5)
                elif "lora_B" in name:
                    p.normal_(0, 0.01)
        folder = root / f"adapter{i}"
        pm.save_pretrained(folder)
        write_card(folder, {"name": folder.name, "domain": f"d{i}",
                            "base": {"spec": loaded.spec, "fingerprint": loaded.fingerprint}})
        names.append(folder.name)
    return names


def wait_up(url: str, proc, timeout: float = 300) -> None:
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise SystemExit("server did not start")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def drive(url: str, choose, clients: int, seconds: float, max_tokens: int) -> dict:
    lat, toks, errors, done = [], 0, 0, 0
    end = time.time() + seconds

    async def one(i: int):
        nonlocal toks, errors, done
        rnd = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            while time.time() < end:
                body = {"model": choose(rnd), "prompt": rnd.choice(PROMPTS), "max_tokens": max_tokens,
                        "temperature": 0}
                t = time.time()
                try:
                    r = await c.post("/v1/completions", json=body)
                    if r.status_code != 200:
                        errors += 1
                        continue
                    toks += r.json()["usage"]["completion_tokens"]
                    done += 1
                    lat.append(time.time() - t)
                except httpx.HTTPError:
                    errors += 1

    t0 = time.time()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.time() - t0
    lat.sort()
    q = lambda p: lat[min(len(lat) - 1, int(p * len(lat)))] if lat else float("nan")  # noqa: E731
    return {"requests": done, "errors": errors, "tokens": toks, "wall": wall, "tok_s": toks / wall,
            "p50": q(0.50), "p99": q(0.99), "mean": statistics.fmean(lat) if lat else float("nan")}


async def drive_stream(url: str, choose, clients: int, seconds: float, max_tokens: int) -> dict:
    """Streamed completions: time to first token and whole-request latency, per request."""
    import json

    ttft, lat, toks, errors = [], [], 0, 0
    end = time.time() + seconds

    async def one(i: int):
        nonlocal toks, errors
        rnd = random.Random(i)
        async with httpx.AsyncClient(base_url=url, timeout=600) as c:
            while time.time() < end:
                body = {"model": choose(rnd), "prompt": rnd.choice(PROMPTS), "max_tokens": max_tokens,
                        "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
                t, first, n = time.time(), None, 0
                try:
                    async with c.stream("POST", "/v1/completions", json=body) as r:
                        if r.status_code != 200:
                            errors += 1
                            continue
                        async for line in r.aiter_lines():
                            if not line.startswith("data: ") or line == "data: [DONE]":
                                continue
                            ev = json.loads(line[6:])
                            if first is None and ev.get("choices") and ev["choices"][0].get("text"):
                                first = time.time() - t
                            if ev.get("usage"):
                                n = ev["usage"]["completion_tokens"]
                    lat.append(time.time() - t)
                    ttft.append(first if first is not None else lat[-1])
                    toks += n
                except httpx.HTTPError:
                    errors += 1

    t0 = time.time()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.time() - t0

    def q(xs, p):
        xs = sorted(xs)
        return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")

    return {"requests": len(lat), "errors": errors, "tok_s": toks / wall, "ttft50": q(ttft, 0.5),
            "ttft99": q(ttft, 0.99), "p50": q(lat, 0.5), "p99": q(lat, 0.99)}


def run_latency(args) -> None:
    """TTFT and latency percentiles under 1/4/8/32 clients for both forwards of `loralab serve`."""
    root = Path(tempfile.mkdtemp(prefix="loralab-bench-latency-"))
    names = make_registry(args.model, root, args.adapters, args.rank)
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    res = {}
    for decode in ("transformers", "static"):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = subprocess.Popen([sys.executable, "-m", "loralab.cli", "serve", "--model", args.model, "--registry",
                                 str(root), "--port", str(port), "--max-batch", str(max(32, args.max_batch)),
                                 "--decode", decode, "--max-tokens", str(max(args.max_tokens, 16))], env=env)
        try:
            wait_up(url, proc)
            asyncio.run(drive_stream(url, lambda r: r.choice(names), 2, 2.0, 4))  # warm-up
            for clients in args.client_counts:
                r = asyncio.run(drive_stream(url, lambda r: r.choice(names), clients, args.seconds, args.max_tokens))
                res[(decode, clients)] = r
                print(f"{decode} {clients} clients: {r}", flush=True)
        finally:
            proc.terminate()
            proc.wait()
    import torch

    print(f"\nmodel {args.model}, {args.adapters} adapters (rank {args.rank}), each request to one at random; "
          f"streamed completions, greedy, max_tokens {args.max_tokens}, {args.seconds:.0f} s per cell; "
          f"{torch.get_num_threads()} torch threads; cpu: {cpu_name()}")
    print("| decoder | clients | requests | tokens/s | TTFT p50 s | TTFT p99 s | latency p50 s | latency p99 s |")
    print("|---|---|---|---|---|---|---|---|")
    for (decode, clients), r in res.items():
        print(f"| {decode} | {clients} | {r['requests']} | {r['tok_s']:.1f} | {r['ttft50']:.3f} | {r['ttft99']:.3f} "
              f"| {r['p50']:.2f} | {r['p99']:.2f} |")
    print(f"errors: {sum(r['errors'] for r in res.values())}")


# ------------------------------------------------------------------ the alternative server

def swap_server(spec: str, registry: Path, port: int, swap: bool) -> None:
    """A single-adapter server: per request (swap) load + merge the adapter, generate, unmerge, drop."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from peft import PeftModel

    from loralab import models

    loaded = models.load(spec)
    tok = loaded.tokenizer
    first = sorted(p.name for p in registry.iterdir() if p.is_dir())[0]
    model = PeftModel.from_pretrained(loaded.model, str(registry / first), adapter_name=first)
    model.eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.post("/v1/completions")
    def complete(body: dict):
        name = body["model"]
        ids = [tok.bos_token_id] + tok.encode(body["prompt"], add_special_tokens=False)
        with lock, torch.inference_mode():
            if swap:  # the adapter comes from disk for this request and goes again after it
                model.load_adapter(str(registry / name), adapter_name="req")
                model.set_adapter("req")
                model.merge_adapter()
            out = model.generate(input_ids=torch.tensor([ids], device=loaded.device), do_sample=False,
                                 max_new_tokens=body["max_tokens"], pad_token_id=tok.pad_token_id)
            if swap:
                model.unmerge_adapter()
                model.set_adapter(first)
                model.delete_adapter("req")
        new = out[0, len(ids):].tolist()
        return {"choices": [{"text": tok.decode(new, skip_special_tokens=True)}],
                "usage": {"prompt_tokens": len(ids), "completion_tokens": len(new)}}

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def run_scenarios(args) -> None:
    import torch

    root = Path(tempfile.mkdtemp(prefix="loralab-bench-serve-"))
    names = make_registry(args.model, root, args.adapters, args.rank)
    res = {}
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    scen = [("mixed", lambda r: r.choice(names)), ("single", lambda r: names[0])]
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen([sys.executable, "-m", "loralab.cli", "serve", "--model", args.model, "--registry",
                             str(root), "--port", str(port), "--max-batch", str(args.max_batch),
                             "--max-tokens", str(max(args.max_tokens, 16))], env=env)
    try:
        wait_up(url, proc)
        asyncio.run(drive(url, scen[0][1], 2, 2.0, 4))  # warm-up
        for label, choose in scen:
            res[label] = asyncio.run(drive(url, choose, args.clients, args.seconds, args.max_tokens))
            print(f"{label}: {res[label]}", flush=True)
    finally:
        proc.terminate()
        proc.wait()
    for label, swap in (("swap", True), ("hf-one", False)):
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, __file__, "--model", args.model, "--_alt", str(root), "--_port", str(port)]
        proc = subprocess.Popen(cmd + (["--_swap"] if swap else []), env=env)
        try:
            wait_up(url, proc)
            choose = (lambda r: r.choice(names)) if swap else (lambda r: names[0])
            asyncio.run(drive(url, choose, 1, 2.0, 4))
            res[label] = asyncio.run(drive(url, choose, args.clients, args.seconds, args.max_tokens))
            print(f"{label}: {res[label]}", flush=True)
        finally:
            proc.terminate()
            proc.wait()
    cores = torch.get_num_threads()
    print(f"\nmodel {args.model}, {args.adapters} adapters (rank {args.rank}, all linear layers), "
          f"{args.clients} clients, {args.seconds:.0f} s per scenario, max_tokens {args.max_tokens}, "
          f"greedy; {cores} torch threads; cpu: {cpu_name()}")
    print(f"{'scenario':<8} {'requests':>8} {'errors':>6} {'tokens/s':>9} {'tok/s/core':>10} "
          f"{'p50 s':>7} {'p99 s':>7}")
    for k, r in res.items():
        print(f"{k:<8} {r['requests']:>8} {r['errors']:>6} {r['tok_s']:>9.1f} {r['tok_s'] / cores:>10.1f} "
              f"{r['p50']:>7.2f} {r['p99']:>7.2f}")
    a = res["mixed"]["tok_s"]
    print(f"\nmixed / single = {a / res['single']['tok_s']:.2f}  (goal >= 0.8)")
    print(f"mixed / swap   = {a / res['swap']['tok_s']:.2f}  (goal >= 4)")
    print(f"mixed / hf-one = {a / res['hf-one']['tok_s']:.2f}  (the single-adapter HF generate loop)")
    print(f"errors: {sum(r['errors'] for r in res.values())}")


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--latency", action="store_true", help="TTFT and latency percentiles per client count, "
                    "static decoder vs the transformers forward")
    ap.add_argument("--client-counts", type=int, nargs="+", default=[1, 4, 8, 32])
    ap.add_argument("--_alt", help=argparse.SUPPRESS)
    ap.add_argument("--_port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_swap", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._alt:
        swap_server(args.model, Path(args._alt), args._port, args._swap)
    elif args.latency:
        run_latency(args)
    else:
        run_scenarios(args)


if __name__ == "__main__":
    main()
