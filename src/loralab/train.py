"""LoRA training: `loralab train` -> `train(cfg)`.

    loralab train --model smollm2-135m --data runs/sport/records --out runs/sport-lora --steps 50
    accelerate launch --num_processes 2 --multi_gpu -m loralab.cli train run.yaml   # DDP (gloo on CPU)

`train(cfg)` builds the pieces (model + PEFT, examples, batcher, optimizer, schedule) and
hands them to `loop`, which takes its objective (a loss function bound to the model,
see losses.py) and its batcher as arguments. The run
folder `cfg.out` receives config.json, precision.json (device and formats that produced the
run, see device.precision_record), train_log.jsonl, checkpoints/ (for --resume) and
adapter/ (PEFT files + loralab.json card; a full model folder for full/scratch).

Precision: with dtype auto, the frozen base of an adapter runs in the format the device
policy measured fastest for training on this machine (bf16 where it beats fp32 by the
policy's margin), the adapter's own matmuls and the fused loss in it too, with fp32 master
weights and optimizer state; benchmarks/train.py checks that the held-out loss stays within
2 % of fp32 training.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import shutil
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from . import __version__, models
from . import device as devpolicy
from .adapters import data_digest, save_adapter, save_full_model
from .config import TrainConfig
from .data.records import Record, read_records
from .data.split import split
from .errors import UserError
from .io import atomic_dir, iter_jsonl, read_json, write_json, write_jsonl
from .fastlora import fast_lora
from .losses import LossFn, Objective, make_loss
from .packing import Batcher, Example, encode_records, eval_batches

LOG = "train_log.jsonl"
# fields that may change between a run and its --resume (the rest fix data order and schedule)
RESUMABLE = {"save_every", "eval_every", "log_every"}


@dataclass
class Setup:
    model: torch.nn.Module
    tokenizer: Any
    loaded: models.Loaded
    train: list[Example]
    eval: list[Example]
    info: dict[str, Any] = field(default_factory=dict)  # counts for the card


# ------------------------------------------------------------------ building

def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def add_trigger(model, tokenizer, trigger: str) -> int:
    """Add `trigger` as one special token (resizing embeddings when needed); its id."""
    tokenizer.add_tokens([trigger], special_tokens=True)
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # new row: mean-resized, seeded by the caller
    return tokenizer.convert_tokens_to_ids(trigger)


def lora_config(cfg: TrainConfig, tokenizer, trigger_id: int | None):
    from peft import LoraConfig

    kw: dict[str, Any] = {}
    if trigger_id is not None:  # the trigger's embedding row trains beside the adapter
        kw["trainable_token_indices"] = [trigger_id]
    if cfg.trigger_mode == "alora":
        kw["alora_invocation_tokens"] = tokenizer.encode(cfg.trigger, add_special_tokens=False)
    return LoraConfig(
        r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, use_rslora=cfg.rslora,
        use_dora=cfg.method == "dora", target_modules=cfg.target_modules, task_type="CAUSAL_LM", **kw)


def build_model(cfg: TrainConfig):
    """(trainable model, tokenizer, base Loaded, number of tokens added)."""
    from transformers import AutoModelForCausalLM

    full = cfg.method in ("full", "scratch")
    # full training keeps fp32 master weights; adapters keep their frozen base in the format the
    # device policy measured fastest for training (fp32 master weights and optimizer state)
    dtype = cfg.dtype
    if cfg.dtype == "auto":
        dtype = "float32" if full else str(devpolicy.resolve(cfg.device, "auto", path="train").dtype).removeprefix("torch.")
    loaded = models.load(cfg.model, device=cfg.device, dtype=dtype)
    model, tok = loaded.model, loaded.tokenizer
    seed_all(cfg.seed)
    if cfg.method == "scratch":  # same architecture, fresh init from the config
        model = AutoModelForCausalLM.from_config(model.config, dtype=torch.float32).to(loaded.device)
    n0 = len(tok)
    # prefix: the trigger is one new token whose row trains; alora: the trigger's own tokens
    # invoke the adapter, so nothing is added and the model is exactly the base before them
    trigger_id = add_trigger(model, tok, cfg.trigger) if cfg.trigger and cfg.trigger_mode == "prefix" else None
    if full:
        model.requires_grad_(True)
    else:
        from peft import get_peft_model

        with warnings.catch_warnings():  # PEFT asks transformers a deprecated question while wrapping
            warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated", FutureWarning)
            model = get_peft_model(model, lora_config(cfg, tok, trigger_id))  # adapters fp32 (autocast)
    model.train()
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.compile:
        compile_layers(model)
    return model, tok, loaded, len(tok) - n0


def compile_layers(model) -> None:
    """torch.compile every decoder layer in place (one graph, reused by identical layers)."""
    for layer in getattr(model.get_decoder(), "layers", None) or []:  # PEFT models forward get_decoder
        layer.compile(dynamic=False)  # batches are padded to one shape (pad_to): static kernels


def _read(path: str) -> list[Record]:
    p = Path(path)
    if not (p / "records.jsonl").exists() and not p.is_file():
        raise FileNotFoundError(f"{path}: no records.jsonl (a records folder is expected)")
    return list(read_records(p))


def build_examples(cfg: TrainConfig, tokenizer) -> tuple[list[Example], list[Example], dict]:
    """(train, eval, counts): split by document, encoded, with replay anchors mixed in."""
    records = _read(cfg.data)
    tr, ev = split(records, cfg.eval_frac, cfg.seed)
    if not tr:
        raise UserError(f"{cfg.data}: no training records after the {cfg.eval_frac} eval split")
    kw = dict(loss_on=cfg.loss_on, max_seq_len=cfg.max_seq_len, trigger=cfg.trigger, fmt=cfg.fmt)
    train, d1 = encode_records(tr, tokenizer, **kw)
    evals, d2 = encode_records(ev, tokenizer, **kw)
    if cfg.trigger_mode == "alora":
        _check_invocation(train + evals, tokenizer.encode(cfg.trigger, add_special_tokens=False), cfg.trigger)
    domains = Counter(r.domain for r in records if r.domain)
    info = {"records": len(records), "train_records": len(tr), "eval_records": len(ev),
            "dropped_too_long": d1 + d2, "domain": domains.most_common(1)[0][0] if domains else None}
    if cfg.replay and cfg.replay_frac > 0:
        anchors, _ = encode_records(_read(cfg.replay), tokenizer, loss_on=cfg.loss_on,
                                    max_seq_len=cfg.max_seq_len, anchor=True)
        n = round(cfg.replay_frac / (1 - cfg.replay_frac) * len(train))  # anchors / all = replay_frac
        rng = random.Random(f"{cfg.seed}:replay")
        picked = [anchors[rng.randrange(len(anchors))] for _ in range(n)] if anchors else []
        train = train + picked
        info["replay"] = {"path": cfg.replay, "digest": data_digest(cfg.replay), "examples": len(picked)}
    return train, evals, info


def _check_invocation(examples: list[Example], inv: list[int], trigger: str) -> None:
    """aLoRA acts from the invocation tokens on; an example where they do not appear trains nothing."""
    def has(ids: list[int]) -> bool:
        return any(ids[i: i + len(inv)] == inv for i in range(len(ids) - len(inv) + 1))

    missing = sum(not has(e.ids) for e in examples)
    if missing:
        raise UserError(f"alora: the trigger {trigger!r} (tokens {inv}) is not found as a token sequence in "
                         f"{missing} of {len(examples)} examples (it tokenizes differently in context)")


def make_optimizer(model, cfg: TrainConfig, total_steps: int):
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    name = "constant_with_warmup" if cfg.schedule == "constant" else cfg.schedule
    sched = get_scheduler(name, opt, num_warmup_steps=cfg.warmup_steps, num_training_steps=total_steps)
    return opt, sched


# ------------------------------------------------------------------ checkpoints

def trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    ckpts = [c for c in ckpts if (c / "state.json").exists()]
    return ckpts[-1] if ckpts else None


def save_checkpoint(out: Path, step: int, model, opt, sched) -> None:
    """Trainable weights + optimizer + schedule + RNG + data position, as one atomic folder."""
    target = out / "checkpoints" / f"step-{step:06d}"
    with atomic_dir(target) as tmp:
        save_file(trainable_state(model), str(tmp / "trainable.safetensors"))
        torch.save({"optimizer": opt.state_dict(), "scheduler": sched.state_dict()}, tmp / "optim.pt")
        torch.save({"torch": torch.get_rng_state(), "python": random.getstate(),
                    "numpy": np.random.get_state()}, tmp / "rng.pt")
        write_json(tmp / "state.json", {"step": step})  # next step to run = step (0-based)
    for old in (out / "checkpoints").glob("step-*"):
        if old != target:
            shutil.rmtree(old, ignore_errors=True)


def load_checkpoint(ckpt: Path, model, opt, sched) -> int:
    state = load_file(str(ckpt / "trainable.safetensors"))
    params = dict(model.named_parameters())
    missing = [n for n in state if n not in params]
    if missing:
        raise ValueError(f"checkpoint {ckpt} does not fit this model: {missing[:3]}")
    with torch.no_grad():
        for n, t in state.items():
            params[n].copy_(t)
    o = torch.load(ckpt / "optim.pt", weights_only=False)
    opt.load_state_dict(o["optimizer"])
    sched.load_state_dict(o["scheduler"])
    r = torch.load(ckpt / "rng.pt", weights_only=False)
    torch.set_rng_state(r["torch"])
    random.setstate(r["python"])
    np.random.set_state(r["numpy"])
    return read_json(ckpt / "state.json")["step"]


# ------------------------------------------------------------------ the loop

@torch.no_grad()
def evaluate(model, loss_fn: LossFn, batches: list[dict]) -> float | None:
    """Token-weighted mean CE over held-out batches (same loss function, no grad, no dropout)."""
    if not batches:
        return None
    was = model.training
    model.eval()
    ce = tok = 0.0
    for b in batches:
        _, s = loss_fn(model, b)
        ce += float(s["ce_sum"])
        tok += float(s["tokens"])
    model.train(was)
    return ce / max(tok, 1.0)


def loop(objective: Objective, batcher: Batcher, opt, sched, *, accelerator, steps: int, start: int,
         grad_accum: int, max_grad_norm: float, on_step: Callable[[int, dict], None]) -> None:
    """Optimizer steps start..steps-1 of `objective` (the loss function bound to the model).

    Each step runs `grad_accum` micro-batches from `batcher`; the reported loss is the
    token-weighted mean over all of them and all processes. `on_step(step, row)` logs,
    evaluates and checkpoints.
    """
    params = [p for p in objective.parameters() if p.requires_grad]
    dev = accelerator.device
    for step in range(start, steps):
        t0 = time.perf_counter()
        sums = torch.zeros(4, dtype=torch.float64, device=dev)  # ce_sum, labelled, real tokens, kl_sum
        for a, batch in enumerate(batcher.step(step, grad_accum)):
            batch = {k: v.to(dev) for k, v in batch.items()}
            last = a == grad_accum - 1  # DDP all-reduces gradients on the last micro-batch only
            skip_sync = accelerator.num_processes > 1 and not last
            with accelerator.no_sync(objective) if skip_sync else contextlib.nullcontext():
                loss, st = objective(batch)
                accelerator.backward(loss / grad_accum)
            sums += torch.stack([st["ce_sum"].double(), st["tokens"].double(), batch["n_real"].double(),
                                 torch.as_tensor(st.get("kl_sum", 0.0), dtype=torch.float64, device=dev)])
        if max_grad_norm > 0:
            accelerator.clip_grad_norm_(params, max_grad_norm)
        lr = sched.get_last_lr()[0]
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        ce, n, real, kl = accelerator.reduce(sums, "sum").tolist()
        row = {"step": step + 1, "loss": ce / max(n, 1), "lr": lr,
               "tokens_per_s": real / (time.perf_counter() - t0), "tokens": int(real)}
        if kl:
            row["kl_sum"] = kl
        on_step(step + 1, row)


# ------------------------------------------------------------------ train()

def _claim_out(acc, out: Path, cfg: TrainConfig, resume: bool) -> None:
    """Refuse to mix runs: a new run needs a fresh folder, --resume needs the same config."""
    if acc.is_main_process:
        saved = out / "config.json"
        if resume and not saved.exists():
            raise FileNotFoundError(f"--resume: {out} holds no run to resume")
        if not resume and saved.exists():
            raise FileExistsError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
        if resume:
            old, now = read_json(saved), cfg.dump()
            diff = sorted(k for k in set(old) | set(now) if k not in RESUMABLE and old.get(k) != now.get(k))
            if diff:
                raise UserError(f"--resume with a different config than {saved}: "
                                 + ", ".join(f"{k}: {old.get(k)!r} -> {now.get(k)!r}" for k in diff))
        write_json(saved, cfg.dump())
    acc.wait_for_everyone()


def _total_steps(cfg: TrainConfig, batcher: Batcher, world: int) -> int:
    if cfg.steps:
        return cfg.steps
    return max(1, math.ceil(cfg.epochs * batcher.per_epoch() / (cfg.grad_accum * world)))


PRECISION = "precision.json"


def training_precision(model) -> dict:
    """The device policy's record of the frozen weights' format, plus the trainable weights' dtype."""
    trainable = {str(p.dtype).removeprefix("torch.") for p in model.parameters() if p.requires_grad}
    return {**devpolicy.precision_record(model), "trainable": ",".join(sorted(trainable))}


def _claim_precision(acc, out: Path, prec: dict, resume: bool) -> None:
    """A resumed run keeps the precision it started in; a different one is refused, not mixed."""
    saved = out / PRECISION
    if resume and saved.exists():
        old = read_json(saved)
        if old.get("precision") != prec["precision"]:
            raise UserError(f"--resume: {out} was trained in {old.get('precision')}, this machine would now use "
                             f"{prec['precision']}; pass --dtype {old.get('format')} to resume it as it began")
    if acc.is_main_process:
        write_json(saved, prec)
    acc.wait_for_everyone()


def build(cfg: TrainConfig) -> Setup:
    model, tok, loaded, added = build_model(cfg)
    train_ex, eval_ex, info = build_examples(cfg, tok)
    info["tokens_added"] = added
    return Setup(model, tok, loaded, train_ex, eval_ex, info)


def _restore(acc, out: Path, resume: bool, model, opt, sched, evaluate_now) -> tuple[int, list[dict]]:
    """(first step to run, log rows so far); the log is cut back to the checkpoint's step."""
    ckpt = latest_checkpoint(out) if resume else None
    start = load_checkpoint(ckpt, model, opt, sched) if ckpt is not None else 0
    if resume and acc.is_main_process:  # say where the run picks up (stderr: stdout stays the result)
        print(f"resuming {out} from {ckpt.relative_to(out)} (step {start})" if ckpt is not None else
              f"resuming {out}: no checkpoint was written yet, starting from step 0", file=sys.stderr, flush=True)
    rows = [r for r in iter_jsonl(out / LOG) if r["step"] <= start] if start and (out / LOG).exists() else []
    if start == 0:
        rows = [{"step": 0, "eval_loss": evaluate_now()}]
    if acc.is_main_process:
        write_jsonl(out / LOG, rows)
    return start, rows


def train(cfg: TrainConfig, *, resume: bool = False, progress: bool = True) -> dict[str, Any]:
    """Train per `cfg`; returns the card written beside the adapter (or full model)."""
    from accelerate import Accelerator

    acc = Accelerator(cpu=devpolicy.resolve_device(cfg.device).type == "cpu")
    out = Path(cfg.out)
    _claim_out(acc, out, cfg, resume)
    s = build(cfg)
    s.info["precision"] = training_precision(s.model)
    _claim_precision(acc, out, s.info["precision"], resume)
    pad = s.tokenizer.pad_token_id if s.tokenizer.pad_token_id is not None else 0
    pad_to = cfg.max_seq_len if cfg.compile else None  # compiled layers: one shape, no recompiles
    batcher = Batcher(s.train, seed=cfg.seed, packing=cfg.packing, max_seq_len=cfg.max_seq_len,
                      batch_size=cfg.batch_size, batch_tokens=cfg.batch_tokens, pad_id=pad,
                      rank=acc.process_index, world=acc.num_processes, pad_to=pad_to)
    steps = _total_steps(cfg, batcher, acc.num_processes)
    loss_fn = make_loss(chunk=cfg.logits_chunk, kl_weight=cfg.kl_weight)
    opt, sched = make_optimizer(s.model, cfg, steps)
    objective, opt = acc.prepare(Objective(s.model, loss_fn), opt)  # DDP wraps the objective
    model = acc.unwrap_model(objective).model
    ev = [{k: v.to(acc.device) for k, v in b.items()}
          for b in eval_batches(s.eval, max_seq_len=cfg.max_seq_len, batch_size=cfg.batch_size, pad_id=pad,
                                pad_to=pad_to)]
    with fast_lora(model):
        start, rows = _restore(acc, out, resume, model, opt, sched, lambda: evaluate(model, loss_fn, ev))
        _run(cfg, acc, out, objective, model, loss_fn, batcher, opt, sched, ev, rows, start, steps, progress)
    card = make_card(cfg, s, rows, steps)
    if acc.is_main_process:
        with atomic_dir(out / "adapter") as tmp:
            if cfg.method in ("full", "scratch"):
                save_full_model(model, tmp, tokenizer=s.tokenizer, card=card)
            else:
                save_adapter(model, tmp, tokenizer=s.tokenizer if s.info["tokens_added"] else None, card=card)
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    acc.wait_for_everyone()
    return card


def _run(cfg, acc, out, objective, model, loss_fn, batcher, opt, sched, ev, rows, start, steps, progress):
    """The loop with logging (train_log.jsonl, progress bar), periodic eval and checkpoints."""
    from .progress import bar

    pb = bar(disable=not (progress and acc.is_main_process))
    task = pb.add_task("train", total=steps, completed=start, info="")
    log = open(out / LOG, "a", encoding="utf-8") if acc.is_main_process else None

    def on_step(step: int, row: dict) -> None:
        if cfg.eval_every and step % cfg.eval_every == 0 or step == steps:
            row["eval_loss"] = evaluate(model, loss_fn, ev)
        rows.append(row)
        if log is not None and (step % cfg.log_every == 0 or "eval_loss" in row):
            log.write(json.dumps(row) + "\n")
            log.flush()
        pb.update(task, completed=step, info=f"loss {row['loss']:.3f} · {row['tokens_per_s']:.0f} tokens/s")
        if cfg.save_every and step % cfg.save_every == 0 and step < steps:
            if acc.is_main_process:
                save_checkpoint(out, step, model, opt, sched)
            acc.wait_for_everyone()

    try:
        with pb:
            loop(objective, batcher, opt, sched, accelerator=acc, steps=steps, start=start,
                 grad_accum=cfg.grad_accum, max_grad_norm=cfg.max_grad_norm, on_step=on_step)
    finally:
        if log is not None:
            log.close()


def make_card(cfg: TrainConfig, s: Setup, rows: list[dict], steps: int) -> dict:
    """The loralab.json card: base, data, trigger, resolved config, curve summary, code version."""
    losses = [r["loss"] for r in rows if "loss" in r]
    tps = [r["tokens_per_s"] for r in rows if "tokens_per_s" in r]
    before = next((r.get("eval_loss") for r in rows if r["step"] == 0), None)
    after = next((r.get("eval_loss") for r in rows if r["step"] == steps), None)
    return {
        "kind": "model" if cfg.method in ("full", "scratch") else "adapter",
        "method": cfg.method,
        "base": {"spec": s.loaded.spec, "fingerprint": None if cfg.method == "scratch" else s.loaded.fingerprint,
                 "path": s.loaded.path},
        "vocab_size": int(s.model.config.vocab_size),  # embedding rows trained with (after added tokens)
        "tokens_added": s.info["tokens_added"],
        "trigger": cfg.trigger, "trigger_mode": cfg.trigger_mode if cfg.trigger else None,
        "domain": cfg.domain or s.info.get("domain"),
        "data": {"path": cfg.data, "abspath": str(Path(cfg.data).resolve()), "digest": data_digest(cfg.data),
                 **{k: v for k, v in s.info.items() if k not in ("domain", "tokens_added", "precision")}},
        "train_examples": len(s.train), "eval_examples": len(s.eval),
        "precision": s.info.get("precision"),
        "config": cfg.dump(),
        "curve": {"steps": steps, "first_loss": losses[0] if losses else None,
                  "last_loss": losses[-1] if losses else None, "best_loss": min(losses) if losses else None,
                  "eval_before": before, "eval_after": after,
                  "mean_tokens_per_s": sum(tps) / len(tps) if tps else None},
        "loralab_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
