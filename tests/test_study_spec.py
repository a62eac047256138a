"""Study specs: explicit expansion, stable ids, every shipped spec validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from loralab.config import TrainConfig
from loralab.study.spec import StudyError, expand, load_spec, parse_spec

STUDIES = Path(__file__).resolve().parents[1] / "studies"

BASE = {
    "name": "t", "model": "tiny-random",
    "data": {"sources": ["olmo:drop-nfl"], "domain": "sport"},
    "train": {"steps": 5, "rank": 4},
    "variants": {"raw": {}, "qa": {"data": {"structure": {"mode": "template"}}}},
    "axes": {"variant": ["raw", "qa"], "train.rank": [4, 8]},
}


def test_expansion_is_the_cross_product_with_overlays():
    runs = expand(parse_spec(BASE))
    assert len(runs) == 4
    got = {(r.labels["variant"], r.config.train["rank"]) for r in runs}
    assert got == {("raw", 4), ("raw", 8), ("qa", 4), ("qa", 8)}
    for r in runs:
        assert (r.config.data.structure is not None) == (r.labels["variant"] == "qa")
        assert r.config.train["steps"] == 5  # base fields survive overlays


def test_ids_are_config_digests():
    a = {r.name: r.id for r in expand(parse_spec(BASE))}
    b = {r.name: r.id for r in expand(parse_spec(BASE))}
    assert a == b and len(set(a.values())) == 4
    changed = dict(BASE, train={"steps": 6, "rank": 4})
    c = {r.name: r.id for r in expand(parse_spec(changed))}
    assert not set(c.values()) & set(a.values())  # a changed field changes every affected id


def test_seeds_multiply_runs():
    runs = expand(parse_spec(dict(BASE, seeds=[0, 1])))
    assert len(runs) == 8 and {r.config.seed for r in runs} == {0, 1}


def test_errors_list_every_problem():
    bad = dict(BASE, axes={"variant": ["raw", "nope"], "bogus.x": [1]})
    with pytest.raises(StudyError) as e:
        parse_spec(bad)
    assert "nope" in str(e.value) and "bogus.x" in str(e.value)
    with pytest.raises(StudyError, match="sources"):
        expand(parse_spec(dict(BASE, data={"domain": "x"})))


@pytest.mark.parametrize("path", sorted(STUDIES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_studies_validate(path, tmp_path):
    spec = load_spec(path)
    runs = expand(spec)
    assert runs
    for r in runs:  # every run's training fields validate against the real config class
        TrainConfig(**{**r.config.train, "model": r.config.model, "data": str(tmp_path), "out": str(tmp_path)})


def test_group_axes_overlay_together():
    spec = dict(BASE, groups={"domain": {"sport": {"data": {"sources": ["olmo:drop-nfl"], "domain": "sport"}},
                                         "medical": {"data": {"sources": ["olmo:medmcqa"], "domain": "medical"}}}},
                axes={"domain": ["sport", "medical"], "variant": ["raw", "qa"]})
    runs = expand(parse_spec(spec))
    assert len(runs) == 4
    for r in runs:
        assert r.config.data.domain == r.labels["domain"]
        assert r.config.data.sources == (["olmo:drop-nfl"] if r.labels["domain"] == "sport" else ["olmo:medmcqa"])
