"""`loralab train`: parse, call `train.train(cfg)`, print.

    loralab train --model smollm2-135m --data runs/sport/records --out runs/sport-lora --steps 50
    loralab train run.yaml --steps 100 --resume
    accelerate launch --num_processes 2 --multi_gpu -m loralab.cli train run.yaml  # CPU-only: gloo
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Optional

import typer

from .app import app, err, out


def _resumable(run: Path) -> bool:
    """A failed run folder is kept only when it holds a checkpoint to --resume from."""
    return any((run / "checkpoints").glob("*/state.json"))


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
    role: Optional[str] = typer.Option(None, help="What the adapter adds: knowledge | style | epistemic | "
                                       "metacognitive (written to its card)."),
    keyword: list[str] = typer.Option([], "--keyword", "-k", help="A word that routes prompts to this adapter "
                                      "(repeatable; written to its card)."),
    replay: Optional[str] = typer.Option(None, help="Anchor records folder mixed in (replay)."),
    replay_frac: Optional[float] = typer.Option(None, help="Fraction of examples from the anchors."),
    kl_weight: Optional[float] = typer.Option(None, help="λ of KL(base ‖ adapter) on anchors."),
    device: Optional[str] = typer.Option(None, help="auto | cpu | cuda[:N]"),
    dtype: Optional[str] = typer.Option(None, help="auto | float32 | bfloat16 | float16"),
    compile: Optional[bool] = typer.Option(None, "--compile/--no-compile", help="torch.compile the decoder layers."),
    gradient_checkpointing: Optional[bool] = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Less memory, ~1/3 more compute."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the run folder's last checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Train a LoRA adapter (or a full/scratch baseline) on a records folder."""
    from ..config import TrainConfig, load_config
    from ..errors import UserError
    from ..io import claim_output
    from ..models import check_spec
    from ..train import train

    flags = dict(model=model, data=data, out=out_dir, method=method, steps=steps, epochs=epochs, seed=seed,
                 lr=lr, rank=rank, alpha=alpha, dropout=dropout, rslora=rslora, warmup_steps=warmup_steps,
                 schedule=schedule, batch_size=batch_size, batch_tokens=batch_tokens, grad_accum=grad_accum,
                 target_modules=None if target_modules is None else
                 (target_modules if target_modules == "all-linear" else target_modules.split(",")),
                 max_seq_len=max_seq_len, packing=packing, loss_on=loss_on, eval_every=eval_every,
                 save_every=save_every, trigger=trigger, trigger_mode=trigger_mode, replay=replay,
                 replay_frac=replay_frac, kl_weight=kl_weight, device=device, dtype=dtype, compile=compile,
                 gradient_checkpointing=gradient_checkpointing, role=role, keywords=keyword or None)
    cfg = load_config(TrainConfig, config, **flags)
    # every input checked before the run folder exists
    for flag, folder in (("--data", cfg.data), ("--replay", cfg.replay)):
        if folder is not None and not ((Path(folder) / "records.jsonl").exists() or Path(folder).is_file()):
            raise UserError(f"{flag} {folder}: " + ("not a records folder (no records.jsonl)"
                                                    if Path(folder).exists() else "no such records folder"))
    if cfg.method != "scratch":
        check_spec(cfg.model)
    if resume and not (Path(cfg.out) / "config.json").exists():
        raise UserError(f"--resume: {cfg.out} holds no run to resume")
    if (Path(cfg.out) / "config.json").exists() and not (resume or overwrite):
        raise UserError(f"{cfg.out} already holds a run; pass --resume to continue it, --overwrite to replace it, "
                        "or choose another --out")
    main_process = os.environ.get("RANK", "0") == "0"  # under `accelerate launch` rank 0 owns the folder
    with claim_output(cfg.out, overwrite=overwrite, resume=resume, clear=True, keep_on_error=_resumable) \
            if main_process else contextlib.nullcontext():
        card = train(cfg, resume=resume, progress=not quiet)
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
