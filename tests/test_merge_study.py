"""The study block `merge:`: validated with the spec, planned per group, run after the runs."""

from __future__ import annotations

import json

import pytest

from loralab.data.records import Record, write_records
from loralab.io import write_json
from loralab.study.merging import plan, run_merges
from loralab.study.spec import StudyError, expand, parse_spec
from test_merge import make_adapter

SPEC = {
    "name": "m", "model": "tiny-random", "data": {"sources": ["olmo:drop-nfl"], "domain": "sport"},
    "train": {"steps": 2}, "eval": {"tasks": ["arc_easy"], "limit": 3, "gen_tasks": []},
    "groups": {"domain": {"sport": {"data": {"domain": "sport"}}, "medical": {"data": {"domain": "medical"}}}},
    "axes": {"domain": ["sport", "medical"], "train.rank": [4]},
    "merge": {"parents": "domain", "methods": {"lin": {"method": "linear"}, "ties": {"method": "ties", "density": 0.5,
                                                                                   "rank": 8}},
              "eval": {"contamination": False, "weights": False, "bootstrap": 100, "device": "cpu",
                       "dtype": "float32"}},
}


def test_merge_block_is_validated_with_the_spec():
    bad = {**SPEC, "merge": {"parents": "domian", "methods": {"x": {"method": "slerp", "densty": 0.5},
                                                              "y": {"method": "ties", "out": "z"}}}}
    with pytest.raises(StudyError) as e:
        expand(parse_spec(bad))
    msg = str(e.value)
    for part in ("merge.parents: 'domian' is not an axis", "merge.methods.x", "densty", "merge.methods.y.out"):
        assert part in msg, part
    three = {**SPEC, "axes": {"domain": ["sport", "medical", "sport2"]},
             "groups": {"domain": {**SPEC["groups"]["domain"], "sport2": {"data": {"domain": "sport"}}}},
             "merge": {"parents": "domain", "methods": {"s": {"method": "slerp"}}}}
    with pytest.raises(StudyError, match="slerp merges exactly two parents"):
        expand(parse_spec(three))


def test_plan_groups_runs_that_differ_only_along_the_parents_axis():
    spec = parse_spec({**SPEC, "axes": {"domain": ["sport", "medical"], "train.rank": [4, 8]}})
    runs = expand(spec)
    merges = plan(spec, runs)
    assert len(merges) == 4  # 2 ranks x 2 methods
    by = {r.id: r for r in runs}
    for m in merges:
        labels = [by[p].labels for p in m.parents]
        assert [x["domain"] for x in labels] == ["sport", "medical"]
        assert labels[0]["train.rank"] == labels[1]["train.rank"] == m.group["train.rank"]
    assert len({m.id for m in merges}) == 4


def test_run_merges_merges_finished_parents_and_compares_them(tiny, tmp_path):
    spec = parse_spec(SPEC)
    runs = expand(spec)
    root = tmp_path / "study"
    for i, r in enumerate(runs):
        d = root / "runs" / r.id
        dom = r.labels["domain"]
        make_adapter(tiny, d / "train" / "adapter", seed=i + 1)
        recs = [Record(kind="qa", domain=dom, source={"doc": f"{dom}{j}"}, question=f"{dom} question {j}?",
                       answer=f"{dom} answer {j}.") for j in range(4)]
        write_records(d / "heldout", recs)
        write_json(d / "data.json", {"heldout_raw": str(d / "heldout")})
        write_json(d / "metrics.json", {"id": r.id})
    res = run_merges(spec, root, runs, progress=False)
    done = {k: v for k, v in res.items() if not k.startswith("table:")}
    assert sorted(v["name"] for v in done.values()) == ["lin", "ties"]
    assert all(v["state"] == "done" for v in done.values()), done
    table = next(v for k, v in res.items() if k.startswith("table:"))
    assert [row["model"] for row in table["table"]][2:] == table["parents"]
    assert {"gain sport", "gain medical"} <= set(table["table"][0])
    comp = json.loads(open(table["comparison"]).read())
    rows = comp["merges"]["lin"]["rows"]
    assert {"in-domain loss: sport", "in-domain loss: medical"} <= {r["metric"] for r in rows}
    assert json.loads((root / "merges.json").read_text()).keys() == res.keys()
