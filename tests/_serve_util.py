"""Adapter folders for the serving tests: PEFT LoRA on the tiny model with visible weights."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model

from loralab.adapters import write_card


def make_adapter(tiny, folder: Path, seed: int, *, rank: int = 4, alpha: float = 8.0, domain: str = "d",
                 targets="all-linear", **card) -> Path:
    """A PEFT LoRA adapter folder + loralab.json card with B drawn large enough to change answers."""
    torch.manual_seed(seed)
    m = get_peft_model(copy.deepcopy(tiny.model), LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    m.save_pretrained(folder)
    write_card(folder, {"name": folder.name, "domain": domain, "base": {"spec": "tiny-random",
                                                                        "fingerprint": tiny.fingerprint}, **card})
    return folder


def peft_with(tiny, folders: dict[str, Path]):
    """The PEFT reference: the tiny base with every adapter loaded under its name."""
    from peft import PeftModel

    names = list(folders)
    m = PeftModel.from_pretrained(copy.deepcopy(tiny.model), str(folders[names[0]]), adapter_name=names[0])
    for n in names[1:]:
        m.load_adapter(str(folders[n]), adapter_name=n)
    m.eval()
    return m


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(*args: str, timeout: float = 120.0, cwd=None):
    """`loralab serve ARGS --port P` as a real process on loopback; (process, base URL) once /health answers.

    The server's output goes to a log file (a pipe nobody reads could fill and stall it);
    `proc.log_path` names it and a failed start shows its tail."""
    import os
    import subprocess
    import sys
    import tempfile
    import time

    import httpx

    port = free_port()
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    log_path = Path(tempfile.mkstemp(prefix="loralab-serve-", suffix=".log")[1])
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-m", "loralab.cli", "serve", *args, "--host", "127.0.0.1",
                                 "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=cwd)
    proc.log_path = log_path
    url = f"http://127.0.0.1:{port}"
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited {proc.returncode}: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not start in time: {log_path.read_text()[-2000:]}")


def stop_server(proc) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except Exception:
        proc.kill()
        proc.wait()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0
