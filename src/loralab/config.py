"""Typed stage configs (pydantic), validated in one place.

Every stage has one config model; its defaults live here and every field is
documented. A YAML file is an overlay on the defaults and command-line flags are an
overlay on the YAML (`load_config(TrainConfig, "run.yaml", steps=50)`).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, Mapping, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import safeyaml
from .errors import UserError

C = TypeVar("C", bound=BaseModel)


class ConfigError(UserError):
    """A config that does not validate; the message lists every problem (also in `.problems`)."""

    def __init__(self, message: str, problems: list[str] | None = None):
        super().__init__(message)
        self.problems = list(problems or [message])


class StageConfig(BaseModel):
    """Base of every stage config: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


# names other tools use for loralab's keys (PEFT, transformers' TrainingArguments, mlx-lm)
SYNONYMS = {
    "learning_rate": "lr", "r": "rank", "lora_r": "rank", "lora_rank": "rank", "lora_alpha": "alpha",
    "lora_dropout": "dropout", "num_epochs": "epochs", "num_train_epochs": "epochs", "max_steps": "steps",
    "iters": "steps", "per_device_train_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum",
    "max_length": "max_seq_len", "max_seq_length": "max_seq_len", "warmup": "warmup_steps",
    "lr_scheduler_type": "schedule", "use_dora": "method", "use_rslora": "rslora", "base_model": "model",
    "dataset": "data", "output_dir": "out", "target": "target_modules",
}


def suggest(word: str, choices: Any) -> str:
    """' (did you mean X?)' for the closest of `choices` to `word` (or its usual synonym), or ''."""
    names = [str(c) for c in choices]
    w = str(word)
    if SYNONYMS.get(w.lower()) in names:
        return f" (did you mean {SYNONYMS[w.lower()]!r}?)"
    close = difflib.get_close_matches(w, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _field_help(cls: type[BaseModel], name: str) -> str:
    f = cls.model_fields.get(name)
    return f" -- {f.description}" if f is not None and f.description else ""


def problems_of(cls: type[BaseModel], error: ValidationError, where: str = "") -> list[str]:
    """One line per problem of a pydantic error: 'where.key: message', unknown keys with a suggestion."""
    out = []
    for x in error.errors():
        loc = ".".join(str(p) for p in x["loc"])
        key = f"{where}.{loc}" if where and loc else (loc or where or cls.__name__)
        if x["type"] == "extra_forbidden":
            out.append(f"{key}: unknown key{suggest(x['loc'][-1], cls.model_fields)}")
        elif x["type"] == "missing":
            out.append(f"{key}: required{_field_help(cls, str(x['loc'][0]))}")
        else:
            msg = x["msg"].removeprefix("Value error, ")
            got = "" if not x["loc"] else f" (got {x.get('input')!r})"
            out.append(f"{key}: {msg}{got}")
    return out


def check_mapping(cls: type[BaseModel], values: Mapping[str, Any] | None, where: str = "",
                  partial: bool = True) -> list[str]:
    """Every problem of `values` as a (partial) `cls` config, one line each; [] when it validates.

    `partial`: required fields may be absent (a study's `train:` block, whose data and out
    the study fills in). Unknown keys come with a close-match suggestion, out-of-range
    values with their allowed range; cross-field rules run when no field is wrong.
    """
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [f"{where or cls.__name__}: must be a mapping of key: value, got {type(values).__name__}"]
    filled = {n: "__filled_by_caller__" for n, f in cls.model_fields.items()
              if partial and f.is_required() and n not in values}  # lets cross-field rules run
    try:
        cls.model_validate({**filled, **values})
    except ValidationError as e:
        keys = {f"{where}.{n}" if where else n for n in filled}
        return [p for p in problems_of(cls, e, where) if p.split(":")[0] not in keys]
    return []


def build(cls: type[C], where: str = "", **values: Any) -> C:
    """`cls(**values)` (None values left to the defaults), or a ConfigError listing every problem."""
    values = {k: v for k, v in values.items() if v is not None}
    try:
        return cls.model_validate(values)
    except ValidationError as e:
        raise _error(cls, problems_of(cls, e, where)) from None


def _error(cls: type[BaseModel], problems: list[str]) -> ConfigError:
    name = cls.__name__.removesuffix("Config").lower() or cls.__name__
    if len(problems) == 1:
        return ConfigError(f"invalid {name} setting: {problems[0]}", problems)
    return ConfigError(f"invalid {name} settings ({len(problems)} problems): " + "; ".join(problems), problems)


def read_yaml(path: str | Path) -> Any:
    """A YAML file's content, or a ConfigError naming the file and the line of the mistake."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} not found" if not p.exists() else f"{path} is not a file")
    try:
        return safeyaml.load(p.read_bytes())
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
    except safeyaml.YamlError as e:
        raise ConfigError(f"config file {path}: {e}") from None


def load_config(cls: type[C], path: str | Path | None = None, **overrides: Any) -> C:
    """Defaults <- YAML file at `path` <- `overrides` (None values are ignored), validated."""
    values: dict[str, Any] = {}
    if path is not None:
        loaded = read_yaml(path) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"config {path} must be a mapping of field: value")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return build(cls, **values)


class TrainConfig(StageConfig):
    """`loralab train`: one adapter (or full model) from a records folder."""

    # what to train on what
    model: str = Field("smollm2-135m", description="Base model spec (see `loralab models`).")
    data: str = Field(description="Records folder (records.jsonl [+ data_card.json]) to train on.")
    out: str = Field(description="Run folder: adapter/, train_log.jsonl, checkpoints/.")
    domain: str | None = Field(None, description="Domain label for the card; default: the records' most common.")
    method: Literal["lora", "dora", "full", "scratch"] = Field(
        "lora", description="lora | dora (PEFT adapters) | full (all weights, fp32) | scratch (random init, full).")

    # adapter shape
    rank: int = Field(8, ge=1, description="LoRA rank r.")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; scale = alpha/r (alpha/sqrt(r) with rslora).")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input (PEFT's default, 0; "
                           "0.05 costs ~35 % more time per step and ~40 % more memory on CPU).")
    rslora: bool = Field(False, description="Rank-stabilised scaling alpha/sqrt(r).")
    target_modules: str | list[str] = Field(
        "all-linear", description="Modules to adapt: 'all-linear' or a list of module names.")

    # optimisation
    lr: float = Field(2e-4, gt=0, description="Peak learning rate (AdamW).")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    warmup_steps: int = Field(0, ge=0, description="Linear warmup steps.")
    schedule: Literal["cosine", "linear", "constant"] = Field("cosine", description="LR decay after warmup.")
    steps: int | None = Field(None, ge=1, description="Optimizer steps; default: from `epochs`.")
    epochs: float | None = Field(None, gt=0, description="Passes over the training split (1 when `steps` is unset).")
    batch_size: int = Field(4, ge=1, description="Sequences (rows, when packing) per micro-batch.")
    batch_tokens: int | None = Field(
        None, ge=1, description="If set: padded tokens per micro-batch, instead of `batch_size` rows.")
    grad_accum: int = Field(1, ge=1, description="Micro-batches per optimizer step (per process).")
    max_seq_len: int = Field(512, ge=8, description="Tokens per example (longer ones are cut) and per packed row.")
    seed: int = Field(0, description="Seeds the split, data order, init and dropout.")

    # data handling
    eval_frac: float = Field(0.1, ge=0, lt=1, description="Held-out fraction (split by document).")
    eval_every: int = Field(0, ge=0, description="Eval loss every N steps (0 = only before and after training).")
    fmt: Literal["chat", "alpaca", "json", "yaml", "plain"] = Field(
        "chat", description="Surface format prompts and responses are rendered in (raw records: plain text).")
    loss_on: Literal["response", "all"] = Field(
        "response", description="Loss on the response only, or on prompt + response. Raw records: whole text.")
    packing: bool | None = Field(
        None, description="Pack several examples per row (no cross-example attention). Default: on, off for alora.")
    logits_chunk: int = Field(128, ge=1, description="Rows of fp32 (rows, vocab) logits alive at once in the loss "
                              "(small blocks are reused by the allocator instead of mapped afresh).")

    gradient_checkpointing: bool = Field(False, description="Recompute each decoder layer in the backward pass: "
                                         "SmolLM2, 8 x 256 tokens: 2.5 GB instead of 6 GB peak RSS, ~18 % slower.")
    compile: bool = Field(False, description="torch.compile each decoder layer: on a 2-core CPU ~10 % faster "
                          "steps after a one-off ~35 s compile, so worth it for runs of a few hundred steps.")

    # what the adapter is for (read by the router and the serving registry)
    role: Literal["knowledge", "style", "epistemic", "metacognitive"] | None = Field(
        None, description="What the adapter adds: knowledge | style | epistemic | metacognitive (card field).")
    keywords: list[str] | None = Field(None, description="Words that route a prompt to this adapter (card field).")

    # signal token
    trigger: str | None = Field(
        None, description="Signal string opening the user prompt (raw: the text), e.g. <|use_lora_sport|>.")
    trigger_mode: Literal["prefix", "alora"] = Field(
        "prefix", description="prefix: a trained token; alora: activated LoRA that acts only from the trigger on.")

    # preservation
    replay: str | None = Field(None, description="Anchor records folder mixed into training (replay).")
    replay_frac: float = Field(0.1, ge=0, lt=1, description="Fraction of training examples drawn from `replay`.")
    kl_weight: float = Field(0.0, ge=0, description="λ for KL(base ‖ adapter) on anchor examples.")

    # bookkeeping
    save_every: int = Field(0, ge=0, description="Checkpoint every N steps for --resume (0 = none).")
    log_every: int = Field(1, ge=1, description="Write a train_log.jsonl row every N steps.")
    device: str = Field("auto", description="auto | cpu | cuda[:N].")
    dtype: str = Field("auto", description="Frozen-weight dtype: auto | float32 | bfloat16 | float16.")

    @model_validator(mode="after")
    def _check(self) -> "TrainConfig":
        problems = []
        if self.steps is None and self.epochs is None:
            self.epochs = 1.0
        if self.packing is None:
            self.packing = self.trigger_mode != "alora"
        if self.trigger_mode == "alora":
            if not self.trigger:
                problems.append("trigger_mode 'alora' needs a trigger")
            if self.packing:
                problems.append("packing cannot be used with alora (it activates from the last trigger of a row)")
            if self.method != "lora":
                problems.append("alora needs method 'lora'")
        if self.kl_weight > 0 and not self.replay:
            problems.append("kl_weight needs anchor records (replay)")
        if self.kl_weight > 0 and self.method not in ("lora", "dora"):
            problems.append("kl_weight needs an adapter method (lora|dora): the base is the adapter disabled")
        if self.trigger_mode == "alora" and self.fmt != "chat":
            problems.append("alora needs the chat format (its invocation sits in the user turn)")
        if self.trigger is not None and not self.trigger.strip():
            problems.append("trigger must not be blank")
        if self.trigger and self.method == "scratch":
            problems.append("a trigger needs a pretrained base (not scratch)")
        if problems:
            raise ValueError("; ".join(problems))
        return self


def field_docs(cls: type[BaseModel]) -> list[dict[str, Any]]:
    """Every field of a config: name, default, allowed range (from its bounds or choices), description."""
    import typing

    rows = []
    for name, f in cls.model_fields.items():
        bounds = []
        for m in f.metadata:
            for attr, sym in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
                if getattr(m, attr, None) is not None:
                    bounds.append(f"{sym} {getattr(m, attr)}")
        choices = [a for t in (f.annotation, *typing.get_args(f.annotation))
                   if typing.get_origin(t) is Literal for a in typing.get_args(t)]
        rng = " | ".join(map(str, choices)) if choices else ", ".join(bounds)
        rows.append({"name": name, "default": None if f.is_required() else f.default, "required": f.is_required(),
                     "range": rng or "any", "description": f.description or ""})
    return rows
