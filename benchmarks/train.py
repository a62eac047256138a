"""LoRA training speed: `loralab train` vs PEFT + TRL `SFTTrainer` with its documented defaults.

    .venv/bin/pip install -e ".[bench]"           # trl, lm-eval
    .venv/bin/python benchmarks/train.py           # 20 steps each, batch 8, 256 tokens
    .venv/bin/python benchmarks/train.py --steps 10 --skip-trl

Same model (embedded SmolLM2-135M), same training passages (NFL game summaries from the
packaged DROP data, the last 20 % of games held out), LoRA r=8 alpha=16 without dropout (PEFT's and loralab's default) on
all linear layers, sequence length 256, batch 8, same steps, learning rate and linear
schedule without warmup, loss on every token.

TRL side: `SFTConfig` left at its defaults except the matched settings above and
`report_to="none"`, `save_strategy="no"` (and `use_cpu=True` on a CPU, without which
its bf16 default refuses to start); its defaults include gradient checkpointing,
bf16 autocast, padding to the longest row and its per-step entropy/accuracy metrics.
loralab side: `loralab.train.train` with its defaults (fp32 on a CPU without AMX,
packing, chunked loss). Tokens/s counts real (non-padding) tokens over the training loop
only (model loading and evaluation excluded) on both sides.

"Final loss" of each = mean next-token cross-entropy of the trained adapter on the same
held-out passages, computed by one plain HF/PEFT function for both, so the two numbers
are comparable whatever each trainer logs.
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


def run_trl(model_path: str, texts: list[str], out: str, a) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(output_dir=out, per_device_train_batch_size=a.batch, max_length=a.seq, max_steps=a.steps,
                     learning_rate=a.lr, lr_scheduler_type="linear", warmup_steps=0, seed=0,
                     report_to="none", save_strategy="no", logging_steps=1, disable_tqdm=True,
                     use_cpu=not torch.cuda.is_available())  # TRL's bf16 default refuses a CPU without it
    peft = LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", task_type="CAUSAL_LM")  # dropout 0 both
    trainer = SFTTrainer(model=model_path, args=args, train_dataset=Dataset.from_list([{"text": t} for t in texts]),
                         peft_config=peft)
    metrics = trainer.train().metrics
    logs = [r for r in trainer.state.log_history if "loss" in r]
    tokens = trainer.state.num_input_tokens_seen or logs[-1].get("num_tokens")
    trainer.model.save_pretrained(out + "/adapter")
    return {"seconds": metrics["train_runtime"], "tokens": float(tokens), "last_loss": logs[-1]["loss"],
            "adapter": out + "/adapter", "bf16": args.bf16, "gradient_checkpointing": args.gradient_checkpointing}


def run_loralab(texts: list[str], out: str, a) -> dict:
    from loralab.config import TrainConfig
    from loralab.data.records import Record
    from loralab.io import write_jsonl
    from loralab.train import train

    data = Path(out) / "records"
    data.mkdir(parents=True)
    write_jsonl(data / "records.jsonl", [Record(kind="raw", text=t, domain="sport").to_json() for t in texts])
    cfg = TrainConfig(data=str(data), out=str(Path(out) / "run"), steps=a.steps, batch_size=a.batch,
                      max_seq_len=a.seq, lr=a.lr, schedule="linear", warmup_steps=0, eval_frac=0.0,
                      packing=a.packing, seed=0, compile=a.compile)
    train(cfg, progress=False)
    rows = [json.loads(x) for x in (Path(cfg.out) / "train_log.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "tokens_per_s" in r][1 if a.compile else 0:]
    secs = sum(r["tokens"] / r["tokens_per_s"] for r in rows)
    return {"seconds": secs, "tokens": float(sum(r["tokens"] for r in rows)), "last_loss": rows[-1]["loss"],
            "adapter": str(Path(cfg.out) / "adapter"), "rows": len(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--packing", action=argparse.BooleanOptionalAction, default=None,
                    help="loralab packing (default: loralab's own default)")
    ap.add_argument("--compile", action="store_true", help="loralab with torch.compile'd decoder layers "
                    "(its first step, which compiles, is left out of tokens/s)")
    ap.add_argument("--skip-trl", action="store_true")
    a = ap.parse_args()
    from loralab import models

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    model_path = models.load("smollm2-135m").path
    with tempfile.TemporaryDirectory() as tmp:
        train_texts, test_texts = passages(Path(tmp))
        print(f"{len(train_texts)} training passages, {len(test_texts)} held out; model {model_path}; "
              f"threads {torch.get_num_threads()}")
        sides = {}
        t0 = time.perf_counter()
        sides["loralab"] = run_loralab(train_texts, tmp + "/ours", a)
        rss_ours = peak_rss_mib()
        print(f"loralab done in {time.perf_counter() - t0:.0f} s wall, peak RSS {rss_ours:.0f} MiB")
        if not a.skip_trl:
            t0 = time.perf_counter()
            sides["trl"] = run_trl(model_path, train_texts, tmp + "/trl", a)
            print(f"TRL done in {time.perf_counter() - t0:.0f} s wall (bf16={sides['trl']['bf16']}, "
                  f"gradient_checkpointing={sides['trl']['gradient_checkpointing']}), "
                  f"peak RSS so far {peak_rss_mib():.0f} MiB")
        for s in sides.values():
            s["heldout"] = heldout_loss(model_path, s["adapter"], test_texts, a.seq)
        print(f"\n{'':20s}{'tokens':>9s}{'seconds':>9s}{'tokens/s':>10s}{'last train loss':>17s}{'held-out loss':>15s}")
        for name, s in sides.items():
            print(f"{name:20s}{s['tokens']:9.0f}{s['seconds']:9.1f}{s['tokens'] / s['seconds']:10.1f}"
                  f"{s['last_loss']:17.4f}{s['heldout']:15.4f}")
        if "trl" in sides:
            o, t = sides["loralab"], sides["trl"]
            ratio = (o["tokens"] / o["seconds"]) / (t["tokens"] / t["seconds"])
            rel = abs(o["heldout"] - t["heldout"]) / t["heldout"]
            print(f"\nspeed-up {ratio:.2f}x (goal >= 4x); held-out loss differs by {rel:.2%} (goal <= 2%)")


if __name__ == "__main__":
    main()
