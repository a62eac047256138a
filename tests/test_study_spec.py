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


def _runner_specs():
    """Shipped specs run by `loralab study` (those with axes); rag/metacog specs belong to their own verbs."""
    import yaml

    return [p for p in sorted(STUDIES.glob("*.yaml")) if "axes" in (yaml.safe_load(p.read_text()) or {})]


@pytest.mark.parametrize("path", _runner_specs(), ids=lambda p: p.name)
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


def test_whole_spec_is_validated_with_suggestions_and_every_problem_at_once():
    bad = dict(BASE, train={"steps": 5, "rnak": 4}, eval={"promts": 3, "foreign": ["medicl", "beekeeping"]},
               data={"sources": ["x.md"], "domain": "beekeeping", "structure": {"mode": "template", "taks": []}})
    with pytest.raises(StudyError) as e:
        expand(parse_spec(bad))
    msg = str(e.value)
    assert "train.rnak: unknown key (did you mean 'rank'?)" in msg
    assert "eval.promts: unknown key (did you mean 'prompts'?)" in msg
    assert "data.structure.taks: unknown key (did you mean 'tasks'?)" in msg
    assert "'medicl'" in msg and "did you mean 'medical'?" in msg
    assert "'beekeeping'" not in msg  # the study's own data domain is a valid foreign domain
    assert "4 problems" in msg and "(in 4 runs)" in msg  # one line per problem, not per run


def test_dry_run_prints_the_step_order_and_refuses_a_bad_spec(tmp_path):
    import yaml
    from typer.testing import CliRunner

    from loralab.cli import app

    good = dict(BASE, variants={"noisy_cleaned": {"data": {"corrupt": 0.1, "clean": {}}}},
                axes={"variant": ["noisy_cleaned"]})
    (tmp_path / "good.yaml").write_text(yaml.safe_dump(good))
    r = CliRunner().invoke(app, ["study", str(tmp_path / "good.yaml"), "--dry-run", "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert "corrupt → clean" in " ".join(r.output.split()) and not (tmp_path / "t").exists()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(dict(BASE, train={"stpes": 3})))
    r = CliRunner().invoke(app, ["study", str(tmp_path / "bad.yaml"), "--dry-run"])
    assert r.exit_code == 2 and "did you mean 'steps'" in r.output and "Traceback" not in r.output
