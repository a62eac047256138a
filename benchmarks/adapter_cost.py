"""What one resident adapter costs a serving decode step, against the base, in one process.

    python benchmarks/adapter_cost.py                       # SmolLM2-135M, its policy's dtype, 5 rounds
    python benchmarks/adapter_cost.py --model tiny-random --rounds 2

The serving engine (`loralab.serve.engine.Engine`) decodes one request at a time (batch 1):
per round, the base and then the adapter each prefill the same chat prompt and decode --steps
tokens at most (an answer that ends sooner gives fewer steps; the median step is what counts),
timed step by step. Two bank
layouts, side by side in the same rounds:
  fp32 factors   what the bank keeps now: LoRA A/B in fp32 beside a bf16 base, the update cast once
  model dtype    the factors in the base's dtype (bf16 on CPU here), as the bank kept them before
The adapter is a random rank-8 LoRA on every linear layer (seeded), written as training writes
it. Prints the median ms per decode step and prefill of each, and the adapter / base speed
ratio (base ms / adapter ms) per round (median and range) and of the medians.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def make_adapter(spec: str, folder: Path, rank: int = 8) -> None:
    import torch
    from peft import LoraConfig, get_peft_model

    from loralab import models
    from loralab.adapters import write_card

    loaded = models.load(spec)
    pm = get_peft_model(loaded.model, LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear"))
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in pm.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.01)
    pm.save_pretrained(folder)
    write_card(folder, {"kind": "adapter", "base": {"spec": spec, "fingerprint": loaded.fingerprint}})


def timed(eng, prompt, adapters, steps: int) -> tuple[float, list[float]]:
    """(prefill ms, [ms per decode step]) of one request decoding `steps` tokens."""
    from loralab.serve.engine import Sampling

    eng.submit(prompt, adapters, Sampling(temperature=0.0, max_tokens=steps + 1))
    t0 = time.perf_counter()
    eng._step_once()  # prefill (and the first token)
    prefill = (time.perf_counter() - t0) * 1000
    out = []
    while eng._active:
        t0 = time.perf_counter()
        eng._step_once()
        out.append((time.perf_counter() - t0) * 1000)
    while not eng._step_once():
        pass
    return prefill, out[:-1] if len(out) > 1 else out  # the last step also releases the row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=40)
    a = ap.parse_args()
    import torch

    from loralab import models
    from loralab.serve.engine import Engine
    from loralab.serve.registry import Registry

    with tempfile.TemporaryDirectory() as tmp:
        make_adapter(a.model, Path(tmp) / "ad")
        loaded = models.load(a.model)
        eng = Engine(loaded, Registry(tmp))
        tok = loaded.tokenizer
        text = tok.apply_chat_template([{"role": "user", "content": "Tell me about the game last night."}],
                                       add_generation_prompt=True, tokenize=False)
        prompt = tok.encode(text, add_special_tokens=False)
        fp32 = dict(eng.bank.stacks)
        low = {n: (A.to(loaded.model.dtype), B.to(loaded.model.dtype)) for n, (A, B) in fp32.items()}
        print(f"model {a.model} ({str(loaded.model.dtype).removeprefix('torch.')}), {torch.get_num_threads()} "
              f"threads, {a.rounds} rounds of {a.steps} decode steps, batch 1")
        res: dict[str, list[float]] = {}
        for r in range(a.rounds + 1):  # round 0 warms up
            for layout, stacks in (("fp32 factors", fp32), ("model dtype", low)):
                eng.bank.stacks = stacks
                for who, ads in (("base", []), ("adapter", [("ad", 1.0)])):
                    pre, steps = timed(eng, prompt, ads, a.steps)
                    if r:
                        res.setdefault(f"{layout}|{who}|step", []).append(statistics.median(steps))
                        res.setdefault(f"{layout}|{who}|prefill", []).append(pre)
        for layout in ("fp32 factors", "model dtype"):
            b, d = res[f"{layout}|base|step"], res[f"{layout}|adapter|step"]
            ratios = [x / y for x, y in zip(b, d)]
            print(f"{layout:13s} decode step: base {statistics.median(b):.1f} ms, adapter {statistics.median(d):.1f} ms;"
                  f" prefill base {statistics.median(res[f'{layout}|base|prefill']):.0f} ms, adapter "
                  f"{statistics.median(res[f'{layout}|adapter|prefill']):.0f} ms; adapter / base speed "
                  f"{statistics.median(b) / statistics.median(d):.3f} (per round: median {statistics.median(ratios):.3f},"
                  f" {min(ratios):.3f}-{max(ratios):.3f})")


if __name__ == "__main__":
    main()
