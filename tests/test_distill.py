"""Self-distillation: the checker, and a run whose counts reconcile."""

from __future__ import annotations

import json

from loralab.data.distill import DistillConfig, check_rewrite, distill
from loralab.data.records import Record, write_records
from loralab.io import iter_jsonl

CFG = DistillConfig()


def test_checker_keeps_faithful_rewrites():
    assert check_rewrite("A touchdown is worth 6 points.", "Six points, that is 6, for a touchdown.", CFG) is None
    assert check_rewrite("Nate Kaeding", "The field goal was kicked by Nate Kaeding.", CFG) is None


def test_checker_refuses_with_reasons():
    assert check_rewrite("It is 37 degrees.", "", CFG) == "empty_rewrite"
    assert check_rewrite("The score was 24-10 after the third quarter ended.",
                         "The score was 21-10 after the third quarter ended.", CFG).startswith("checker_numbers")
    assert check_rewrite("Nate Kaeding", "Someone else kicked it.", CFG).startswith("checker_answer")
    long = "The quarterback threw three touchdown passes in the first half of the game."
    assert check_rewrite(long, "Yes.", CFG).startswith("length_ratio")
    assert check_rewrite(long, "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz", CFG).startswith("gibberish")


def test_distill_reconciles_and_links(tmp_path, tiny):
    recs = [
        Record(kind="qa", question="How many points is a touchdown?", answer="6", source={"doc": "a"}),
        Record(kind="instruction", instruction="Describe a field goal.", output="A kick through the posts.",
               source={"doc": "b"}),
        Record(kind="raw", text="A raw passage passes through unchanged.", source={"doc": "c"}),
    ]
    write_records(tmp_path / "in", recs)
    card = distill(tmp_path / "in", tmp_path / "out", DistillConfig(model="tiny-random", max_new_tokens=8,
                                                                    progress=False), loaded=tiny)
    tot = card["reconciliation"]["totals"]
    kept = list(iter_jsonl(tmp_path / "out" / "records.jsonl"))
    quarantined = list(iter_jsonl(tmp_path / "out" / "quarantine.jsonl"))
    assert tot["read"] == 3 == tot["kept"] + tot["quarantined"] == len(kept) + len(quarantined)
    assert any(r["kind"] == "raw" for r in kept)  # nothing to rewrite: kept as it is
    for r in kept:
        if r["kind"] != "raw":  # every kept rewrite links back and carries its loss shift
            assert set(r["meta"]["distill"]) == {"from_id", "loss_before", "loss_after"}
    for q in quarantined:
        assert q["reason"] and q["location"]["line"] in (1, 2) and json.dumps(q)
