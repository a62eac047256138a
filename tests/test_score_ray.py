"""Scale-out: Ray Data actors give the in-process engine's scores (local 2-worker cluster)."""

from __future__ import annotations

import pytest

from loralab.data.records import Record
from loralab.score import ScoreConfig, score_records

ray = pytest.importorskip("ray")


def test_ray_engine_matches_local(tiny, tmp_path):
    rows = [(i + 1, Record(kind="qa", question=f"How many legs does a {a} have?", answer=f"A {a} has {n} legs."))
            for i, (a, n) in enumerate([("cat", 4), ("spider", 8), ("bird", 2), ("ant", 6), ("snake", 0)])]
    rows.append((6, Record(kind="raw", text="The field goal was good from 45 yards out.")))
    cfg = dict(model="tiny-random", device="cpu", dtype="float32", cache=False, progress=False, workers=2,
               ray_batch_records=2)
    local = score_records(rows, ScoreConfig(**cfg), tiny)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        dist = score_records(rows, ScoreConfig(engine="ray", **cfg), tiny)
    finally:
        ray.shutdown()
    assert dist.stats["computed"] == 6
    for a, b in zip(local.records, dist.records):
        sa, sb = a.meta["score"], b.meta["score"]
        assert sa.keys() == sb.keys()
        for k, v in sa.items():
            if isinstance(v, float):
                assert sb[k] == pytest.approx(v, rel=1e-6, abs=1e-6), k
            else:
                assert sb[k] == v, k
