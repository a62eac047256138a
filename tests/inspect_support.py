"""Shared pieces of the inspector tests: LoRA adapters on the tiny model, a real server."""

from __future__ import annotations

import contextlib
import copy
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import torch

from loralab.adapters import save_adapter


def make_adapter(base, folder: Path, seed: int, gain: float = 30.0) -> Path:
    """A LoRA adapter (r=4, all linear layers) on `base` with random A and B, B scaled by `gain`
    so that the tiny model's near-uniform distribution visibly moves."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    pm = get_peft_model(copy.deepcopy(base.model),
                        LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_B" in n:
                p.mul_(gain)
    save_adapter(pm, folder, card={"base": {"spec": base.spec, "fingerprint": base.fingerprint}, "domain": "test"})
    return folder


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(args: list[str], log: Path, timeout: float = 120.0):
    """`python -m loralab.serve.inspect ARGS` on a free loopback port; yields its base URL."""
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as lf:
        proc = subprocess.Popen([sys.executable, "-m", "loralab.serve.inspect", *args, "--port", str(port)],
                                stdout=lf, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        t0 = time.time()
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"inspector exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                if httpx.get(url + "/inspect/api/state", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() - t0 > timeout:
                raise RuntimeError(f"inspector did not start in {timeout} s: {log.read_text()[-2000:]}")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def train_one_step(data: Path, out: Path) -> None:
    """`loralab train --data DATA` on the tiny model, one step (the CLI's own code, in process)."""
    from typer.testing import CliRunner

    from loralab.cli import app

    r = CliRunner().invoke(app, ["train", "--model", "tiny-random", "--data", str(data), "--out", str(out),
                                 "--steps", "1", "--dtype", "float32", "--device", "cpu", "-q"])
    assert r.exit_code == 0, r.output
    assert (out / "adapter" / "adapter_model.safetensors").exists()
