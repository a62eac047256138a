"""How long a study will take here: `loralab study SPEC --dry-run` prints it.

Two sources, the better one used:
  observed   runs of this study already finished here: their recorded seconds (data +
             training from data.json, their share of their evaluation group's time from
             metrics.json), mean per method, times the pending runs of that method;
  measured   otherwise: the model's speed on this machine, timed now for a few seconds
             (one LoRA training step, one full training step when the study has full or
             scratch runs, one forward pass, at the study's batch and sequence length; cached
             under $LORALAB_HOME/estimate), times each run's tokens: training steps × batch ×
             length, twice the training records for IFD scoring, the evaluation's forward
             tokens (benchmark items, contamination prompts, held-out records) and generated
             tokens (self-distillation, contamination answers).
The measured estimate counts model arithmetic, not data preparation or start-up, so it
reads as a lower bound; the observed one includes everything.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from ..evaluate.drift import DOMAINS
from ..io import read_json, write_json
from .evaluation import eval_domains
from .spec import Run

TASK_TOKENS = 4 * 48  # a multiple-choice item: ~4 choices of ~48 tokens (prefix-shared, so an upper bound)
PROMPT_TOKENS = 96  # a contamination prompt with its answer
HELDOUT_RECORDS = 40  # held-out records scored per run (both forms)
GEN_SPEED_FACTOR = 25  # a generated token costs ~25 forward tokens on CPU (one step per token, small batches)


def _key(model: str, batch: int, seq: int, full: bool) -> str:
    import torch

    from ..device import device_name

    blob = json.dumps([model, batch, seq, full, device_name(), torch.__version__, torch.get_num_threads()])
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def measure(model: str, batch: int, seq: int, full: bool = False, root: Path | None = None) -> dict:
    """Tokens per second here: LoRA training, full training (when asked), forward pass."""
    import torch
    from peft import LoraConfig, get_peft_model

    from .. import models
    from ..models import home

    path = Path(root or home() / "estimate") / f"{_key(model, batch, seq, full)}.json"
    if path.exists():
        return read_json(path)
    loaded = models.load(model)
    m = loaded.model
    vocab = m.config.vocab_size
    x = torch.randint(0, vocab, (batch, seq), device=loaded.device)

    def step(mod, params):
        opt = torch.optim.AdamW(params, lr=1e-5)
        for _ in range(2):  # the second step is timed
            t = time.perf_counter()
            mod(input_ids=x, labels=x).loss.backward()
            opt.step()
            opt.zero_grad()
        return batch * seq / (time.perf_counter() - t)

    out = {"model": model, "batch": batch, "seq": seq}
    with torch.no_grad():
        m(input_ids=x)
        t = time.perf_counter()
        m(input_ids=x)
        out["forward_tok_s"] = batch * seq / (time.perf_counter() - t)
    if full:
        m.train()
        out["full_train_tok_s"] = step(m, [p for p in m.parameters()])
        m.eval()
    pm = get_peft_model(m, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
    pm.train()
    out["lora_train_tok_s"] = step(pm, [p for p in pm.parameters() if p.requires_grad])
    write_json(path, out)
    return out


def run_tokens(run: Run) -> dict:
    """The model work of one run, in tokens."""
    t, d, e = run.config.train, run.config.data, run.config.eval
    steps = t.get("steps") or 16 * float(t.get("epochs") or 1)
    train = steps * int(t.get("batch_size", 4)) * int(t.get("max_seq_len", 512))
    n_items = (d.limit or 100) * len(d.sources)
    score = 2 * n_items * 128 if d.select else 0
    tasks = len(e.get("tasks") or ["arc_easy", "piqa"]) * int(e.get("limit") or 40)
    domains = len(eval_domains(run)) if "foreign" in e else len(DOMAINS)  # as evaluation.evaluate_group asks
    prompts = int(e.get("prompts") or 30) * domains * (2 if t.get("trigger") else 1)
    fwd = tasks * TASK_TOKENS + prompts * PROMPT_TOKENS + HELDOUT_RECORDS * int(t.get("max_seq_len", 512))
    gen = (n_items * int((d.distill or {}).get("max_new_tokens", 96)) if d.distill else 0) + prompts * 16
    return {"train": train, "forward": fwd + score, "generate": gen}


def observed(root: Path, runs: list[Run]) -> dict[str, float]:
    """{method: mean seconds per finished run} from this study's run folders."""
    per: dict[str, list[float]] = {}
    found = []
    for r in runs:
        d = root / "runs" / r.id
        if (d / "metrics.json").exists() and (d / "data.json").exists():
            found.append((r, read_json(d / "data.json").get("seconds", {}), read_json(d / "metrics.json")))
    size: dict[str, int] = {}  # runs per evaluation group: the group's time is shared between them
    for _, _, m in found:
        size[m.get("eval_dir", "")] = size.get(m.get("eval_dir", ""), 0) + 1
    for r, sec, m in found:
        ev = (m.get("seconds") or {}).get("eval_group", 0.0) / size[m.get("eval_dir", "")]
        per.setdefault(r.config.train.get("method", "lora"), []).append(sum(sec.values()) + ev)
    return {k: sum(v) / len(v) for k, v in per.items()}


def estimate(runs: list[Run], root: Path, pending: set[str] | None = None) -> dict:
    """{"seconds": total for the pending runs, "source": "observed" | "measured" | "mixed", "per_method": ...}."""
    pending = {r.id for r in runs} if pending is None else pending
    todo = [r for r in runs if r.id in pending]
    if not todo:
        return {"seconds": 0.0, "source": "observed", "runs": 0}
    seen = observed(root, runs)
    r0 = todo[0].config
    need = [r for r in todo if r.config.train.get("method", "lora") not in seen]
    speed = None
    if need:
        full = any(r.config.train.get("method") in ("full", "scratch") for r in need)
        speed = measure(r0.model, int(r0.train.get("batch_size", 4)), int(r0.train.get("max_seq_len", 512)), full)
    total, per = 0.0, {}
    for r in todo:
        meth = r.config.train.get("method", "lora")
        if meth in seen:
            s = seen[meth]
        else:
            tok = run_tokens(r)
            tr = speed["full_train_tok_s"] if meth in ("full", "scratch") else speed["lora_train_tok_s"]
            s = tok["train"] / tr + (tok["forward"] + GEN_SPEED_FACTOR * tok["generate"]) / speed["forward_tok_s"]
        per[meth] = per.get(meth, 0.0) + s
        total += s
    src = "observed" if not need else ("measured" if not seen else "mixed")
    return {"seconds": total, "source": src, "runs": len(todo), "per_method": per, "speed": speed,
            "observed": seen}
