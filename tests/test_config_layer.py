"""One config layer: every stage config forbids unknown keys and documents every field with its range."""

from __future__ import annotations

import pytest

from loralab.config import ConfigError, TrainConfig, build, field_docs, load_config
from loralab.data.clean import CleanConfig
from loralab.data.corrupt import CorruptConfig
from loralab.data.distill import DistillConfig
from loralab.data.ingest import IngestConfig
from loralab.data.structure import StructureConfig
from loralab.score import ScoreConfig
from loralab.select import SelectConfig

STAGES = [IngestConfig, CleanConfig, CorruptConfig, StructureConfig, DistillConfig, ScoreConfig, SelectConfig,
          TrainConfig]


@pytest.mark.parametrize("cls", STAGES, ids=lambda c: c.__name__)
def test_every_field_documented_and_unknown_keys_refused(cls):
    assert cls.model_config.get("extra") == "forbid"
    docs = field_docs(cls)
    assert [d["name"] for d in docs] == list(cls.model_fields)
    assert all(d["description"] for d in docs), [d["name"] for d in docs if not d["description"]]
    required = {n: "x" for n, f in cls.model_fields.items() if f.is_required()}
    if cls is SelectConfig:
        required = {"policies": ["random:10"]}
    with pytest.raises(ConfigError, match="unknown key"):
        build(cls, **required, not_a_field=1)


def test_ranges_are_documented_and_enforced():
    docs = {d["name"]: d for d in field_docs(TrainConfig)}
    assert docs["rank"]["range"] == ">= 1" and docs["dropout"]["range"] == ">= 0, < 1"
    assert docs["schedule"]["range"] == "cosine | linear | constant"
    assert docs["role"]["range"] == "knowledge | style | epistemic | metacognitive"
    near = {d["name"]: d for d in field_docs(CleanConfig)}["near_dup"]
    assert near["range"] == "> 0, <= 1" and near["default"] == 0.8
    with pytest.raises(ConfigError) as e:
        build(CleanConfig, near_dup=5, min_chars=-1, max_garbage=2)
    assert e.value.problems == [
        "min_chars: Input should be greater than or equal to 0 (got -1)",
        "max_garbage: Input should be less than or equal to 1 (got 2)",
        "near_dup: Input should be less than or equal to 1 (got 5)"]


def test_select_policies_checked_whole(tmp_path):
    with pytest.raises(ConfigError) as e:
        build(SelectConfig, policies=["ifd_topk:150", "random:0", "diversty:10", "ifd_topk:10"])
    (line,) = e.value.problems
    for part in ("'ifd_topk:150': pct must be in (0, 100]", "'random:0': pct must be in (0, 100]",
                 "unknown policy 'diversty' (did you mean 'diversity'?)"):
        assert part in line, part
    assert build(SelectConfig, policies=["ifd_topk:100", "random:0.5"]).policies == ["ifd_topk:100", "random:0.5"]


def test_yaml_overlay_with_flags(tmp_path):
    (tmp_path / "run.yaml").write_text("model: tiny-random\nrank: 4\nsteps: 3\n")
    cfg = load_config(TrainConfig, tmp_path / "run.yaml", data="d", out="o", steps=5, lr=None)
    assert (cfg.model, cfg.rank, cfg.steps, cfg.lr) == ("tiny-random", 4, 5, 2e-4)
