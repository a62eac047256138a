"""Batch generation as distillation, contamination checks and the inspector run it: `generate_ids`
on the static-cache backend beside transformers `generate` (the previous backend), same prompts.

    python benchmarks/generate.py                       # SmolLM2, 16 chat prompts, 48 new tokens
    python benchmarks/generate.py --prompts 8 --new 32

Chat prompts of different lengths (questions of the routing benchmark, English and Russian), greedy,
EOS honoured (answers end where the model ends them), the batch the way `generate_sorted` hands it over (shortest first, `--batch` at a time).
Timed the same way: one untimed warm-up call per backend, then the best of `--repeat` timed calls;
tokens/s counts the answers' tokens. "hf" is `model.generate` on a left-padded batch with a dynamic
cache, as loralab ran it before and as a user calls it; "hf-static" is the same with transformers'
own static cache (`cache_implementation="static"`), the tuned setting. Then each backend's answers
are compared with transformers' greedy answer of each prompt run alone (no padding, no neighbours).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from serve import cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--prompts", type=int, default=16)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new", type=int, default=48)
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()

    from loralab import models
    from loralab.generate import chat_inputs, generate_sorted

    loaded = models.load(args.model)
    rows = [json.loads(x) for x in (HERE / "routing" / "prompts.jsonl").read_text().splitlines()]
    picked = [r["text"] for r in rows if r["style"] in ("question", "instruction")][:: max(1, len(rows) // (2 * args.prompts))]
    inputs = chat_inputs(loaded.tokenizer, picked[: args.prompts])

    def run(name: str, xs: list[list[int]]) -> list[list[int]]:
        """Greedy answers of `xs` by one backend, batched as generate_sorted does."""
        if name != "hf-static":
            return generate_sorted(loaded, xs, batch_size=args.batch, max_new_tokens=args.new, backend=name)
        gc = loaded.model.generation_config  # transformers' own static cache, for this call only
        old = getattr(gc, "cache_implementation", None)
        gc.cache_implementation = "static"
        try:
            return generate_sorted(loaded, xs, batch_size=args.batch, max_new_tokens=args.new, backend="hf")
        finally:
            gc.cache_implementation = old

    results = {}
    for name in ("static", "hf", "hf-static"):
        out = run(name, inputs)  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = run(name, inputs)
            best = min(best, time.perf_counter() - t)
        n = sum(len(x) for x in out)
        results[name] = (out, n, best)
        print(f"{name:<10} {n} tokens in {best:.2f} s: {n / best:.1f} tok/s", flush=True)
    alone = [run("hf", [x])[0] for x in inputs]  # transformers, one prompt at a time
    st_alone = [run("static", [x])[0] for x in inputs]
    for name, ref in (("static in batches", results["static"][0]), ("hf in batches", results["hf"][0]),
                      ("hf-static in batches", results["hf-static"][0]), ("static one at a time", st_alone)):
        print(f"{name}: {sum(a == b for a, b in zip(ref, alone))} of {len(inputs)} answers equal transformers "
              "one prompt at a time")
    same = results["static"][0] == results["hf"][0]
    differ = sum(a != b for a, b in zip(results["static"][0], results["hf"][0]))
    print(f"\nmodel {loaded.spec} ({str(next(loaded.model.parameters()).dtype).removeprefix('torch.')}), "
          f"{len(inputs)} chat prompts ({min(map(len, inputs))}-{max(map(len, inputs))} tokens), batch {args.batch}, "
          f"up to {args.new} new tokens, greedy; {torch.get_num_threads()} threads; cpu: {cpu_name()}")
    print("same tokens as hf: " + ("yes, every answer" if same else f"no: {differ} of {len(inputs)} answers differ "
                                   "(a left-padded batch is not the same arithmetic as one prompt alone)"))
    s = results["static"][1] / results["static"][2]
    print(f"static / hf = {s / (results['hf'][1] / results['hf'][2]):.2f}, "
          f"static / hf-static = {s / (results['hf-static'][1] / results['hf-static'][2]):.2f}")


if __name__ == "__main__":
    main()
