"""`loralab train`: parse, call `train.train(cfg)`, print.

    loralab train --model smollm2-135m --data runs/sport/records --out runs/sport-lora --steps 50
    loralab train run.yaml --steps 100 --resume
    accelerate launch --num_processes 2 --multi_gpu -m loralab.cli train run.yaml  # CPU-only: gloo
"""

from __future__ import annotations

from typing import Optional

import typer

from .app import app, err, fail, out


@app.command("train")
def train_cmd(
    config: Optional[str] = typer.Argument(None, help="YAML file of TrainConfig fields (flags override it)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Base model spec."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Records folder to train on."),
    out_dir: Optional[str] = typer.Option(None, "--out", "-o", help="Run folder (adapter/ lands inside)."),
    method: Optional[str] = typer.Option(None, help="lora | dora | full | scratch"),
    steps: Optional[int] = typer.Option(None, help="Optimizer steps (default: one epoch)."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the training split."),
    seed: Optional[int] = typer.Option(None, help="Seed for split, order, init and dropout."),
    lr: Optional[float] = typer.Option(None, help="Peak learning rate."),
    rank: Optional[int] = typer.Option(None, help="LoRA rank."),
    alpha: Optional[float] = typer.Option(None, help="LoRA alpha."),
    dropout: Optional[float] = typer.Option(None, help="LoRA dropout."),
    rslora: Optional[bool] = typer.Option(None, "--rslora/--no-rslora", help="Rank-stabilised scaling."),
    target_modules: Optional[str] = typer.Option(None, help="'all-linear' or comma-separated module names."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear warmup steps."),
    schedule: Optional[str] = typer.Option(None, help="cosine | linear | constant"),
    batch_size: Optional[int] = typer.Option(None, help="Sequences (packed rows) per micro-batch."),
    batch_tokens: Optional[int] = typer.Option(None, help="Padded tokens per micro-batch (instead of batch-size)."),
    grad_accum: Optional[int] = typer.Option(None, help="Micro-batches per optimizer step."),
    max_seq_len: Optional[int] = typer.Option(None, help="Tokens per example / packed row."),
    packing: Optional[bool] = typer.Option(None, "--packing/--no-packing", help="Pack examples into rows."),
    loss_on: Optional[str] = typer.Option(None, help="response | all"),
    eval_every: Optional[int] = typer.Option(None, help="Eval loss every N steps."),
    save_every: Optional[int] = typer.Option(None, help="Checkpoint every N steps (for --resume)."),
    trigger: Optional[str] = typer.Option(None, help="Signal token, e.g. '<|use_lora_sport|>'."),
    trigger_mode: Optional[str] = typer.Option(None, help="prefix | alora"),
    replay: Optional[str] = typer.Option(None, help="Anchor records folder mixed in (replay)."),
    replay_frac: Optional[float] = typer.Option(None, help="Fraction of examples from the anchors."),
    kl_weight: Optional[float] = typer.Option(None, help="λ of KL(base ‖ adapter) on anchors."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the decoder layers."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Less memory, ~1/3 more compute."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a LoRA adapter (or a full/scratch baseline) on a records folder."""
    from ..adapters import AdapterError
    from ..config import ConfigError, TrainConfig, load_config
    from ..models import ModelError
    from ..train import train

    flags = dict(model=model, data=data, out=out_dir, method=method, steps=steps, epochs=epochs, seed=seed,
                 lr=lr, rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, warmup_steps=warmup_steps,
                 schedule=schedule, batch_size=batch_size, batch_tokens=batch_tokens, grad_accum=grad_accum,
                 target_modules=None if target_modules is None else
                 (target_modules if target_modules == "all-linear" else target_modules.split(",")),
                 max_seq_len=max_seq_len, packing=packing, loss_on=loss_on, eval_every=eval_every,
                 save_every=save_every, trigger=trigger, trigger_mode=trigger_mode, replay=replay,
                 replay_frac=replay_frac, kl_weight=kl_weight, device=device, dtype=dtype, compile=compile,
                 gradient_checkpointing=gradient_checkpointing)
    try:
        cfg = load_config(TrainConfig, config, **flags)
        card = train(cfg, resume=resume, progress=not quiet)
    except (ConfigError, ModelError, AdapterError, ValueError, FileNotFoundError, FileExistsError) as e:
        fail(str(e))
        return
    c = card["curve"]
    fmt = lambda x: "n/a" if x is None else f"{x:.4f}"  # noqa: E731
    out.print(f"trained {cfg.method} on {card['train_examples']} examples for {c['steps']} steps "
              f"({fmt(c['mean_tokens_per_s'])} tokens/s)")
    out.print(f"train loss {fmt(c['first_loss'])} -> {fmt(c['last_loss'])}; "
              f"eval loss {fmt(c['eval_before'])} -> {fmt(c['eval_after'])}")
    out.print(f"wrote {cfg.out}/adapter")
    if card["data"].get("dropped_too_long"):
        err.print(f"note: {card['data']['dropped_too_long']} records had no token left to learn "
                  f"within max_seq_len={cfg.max_seq_len}")
