"""Structure: template items are spans of their passage; generations are parsed and checked."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data.ingest import IngestConfig, ingest
from loralab.data.records import Record, read_records, write_records
from loralab.data.structure import (
    BLANK, StructureConfig, check_generation, judge, parse_generation, structure,
)
from loralab.data.stage import Reject
from loralab.io import iter_jsonl

P = ("The Lions scored first with a 23-yard field goal by Jason Hanson. The Buccaneers tied it with a "
     "38-yard field goal by Connor Barth. In the second quarter Detroit took the lead with a 36-yard "
     "touchdown catch by Calvin Johnson. Tampa Bay answered before the half.")
CFG = StructureConfig(progress=False)


def _raw(text, doc="d1"):
    return Record(kind="raw", text=text, domain="sport", source={"path": "p", "doc": doc})


def test_templates_are_exact_spans_of_the_passage(tmp_path):
    recs = [_raw(P), _raw("one line without an end", "d2"), Record(kind="qa", question="Q?", answer="A.")]
    write_records(tmp_path / "in", recs)
    card = structure(tmp_path / "in", tmp_path / "out", CFG)
    out = list(read_records(tmp_path / "out"))
    cont = next(r for r in out if r.meta.get("task") == "continue")
    cloze = next(r for r in out if r.meta.get("task") == "cloze")
    assert cont.input + " " + cont.output == P and cont.input.endswith(".") and cont.output
    assert cloze.context.replace(BLANK, cloze.answer) == P and P.count(cloze.answer) == 1
    assert all(r.meta["from_id"] == recs[0].id and r.source == recs[0].source and r.domain == "sport"
               for r in (cont, cloze))
    assert out[-1] == recs[2]  # non-raw records pass through unchanged
    q = list(iter_jsonl(tmp_path / "out" / "quarantine.jsonl"))
    assert [(e["location"]["line"], e["reason"]) for e in q] == [(2, "no_template")]
    t = card["reconciliation"]["totals"]
    assert (t["read"], t["kept"], t["quarantined"], t["records"]) == (3, 2, 1, 3)


def test_template_choice_is_seeded(tmp_path):
    write_records(tmp_path / "in", [_raw(P)])
    a = [structure(tmp_path / "in", tmp_path / f"o{s}", StructureConfig(progress=False, seed=s, tasks=["cloze"]))
         for s in (0, 0)]
    assert a[0]["records"] == a[1]["records"]
    assert next(read_records(tmp_path / "o0")).answer in P


def test_parser_and_checker_on_crafted_generations():
    ok = "Question: Who kicked the first field goal?\nAnswer: Jason Hanson\nExtra words after."
    assert parse_generation(ok) == ("Who kicked the first field goal?", "Jason Hanson")
    assert check_generation("Who kicked the first field goal?", "Jason Hanson", P, CFG) is None
    assert check_generation("How long was it?", "23 yards", P, CFG) is None  # numbers count as grounded words
    cases = {
        "What's the answer to the question?": "malformed_output",
        "Question: How did it end?\n\nReply:\nThe game ended.": "malformed_output",
        "Question: Who scored?\nAnswer:": "empty_output",
        "Question: Who scored?\nAnswer: " + "very long answer " * 20: "overlong",
        "Question: Who won the Super Bowl?\nAnswer: Tom Brady and the Patriots": "ungrounded",
        "Question: Who scored?\nAnswer: the": "ungrounded",  # no content word at all
    }
    for text, reason in cases.items():
        got = judge(text, _raw(P), CFG, "crafted")
        assert isinstance(got, Reject) and got.reason == reason, (text, got)
    good = judge(ok, _raw(P), CFG, "crafted")[0]
    assert good.kind == "qa" and good.answer == "Jason Hanson" and good.context is None
    assert good.meta == {"from_id": _raw(P).id, "task": "model_qa", "generator": "crafted"}


def test_model_mode_pipeline_with_crafted_generator(tmp_path):
    recs = [_raw(P, f"d{i}") for i in range(3)] + [Record(kind="qa", question="Q?", answer="A.")]
    recs[1] = _raw(P + " More.", "d1")
    recs[2] = _raw(P + " Even more.", "d2")
    write_records(tmp_path / "in", recs)
    replies = iter(["Question: Who caught the touchdown?\nAnswer: Calvin Johnson", "nonsense", "Question: Q\nAnswer: Elvis"])
    seen = []

    def gen(convs):
        seen.extend(convs)
        return [next(replies) for _ in convs]

    card = structure(tmp_path / "in", tmp_path / "out", StructureConfig(mode="model", progress=False, batch_size=2),
                     generator=gen)
    assert len(seen) == 3 and all(c[-1]["content"].endswith(r.text) for c, r in zip(seen, recs))
    assert card["quarantine"]["by_reason"] == {"malformed_output": 1, "ungrounded": 1}
    assert card["records"]["by_kind"] == {"qa": 2}
    assert card["reconciliation"]["totals"]["balanced"]


@pytest.mark.slow
def test_model_mode_on_nfl_passages_with_smollm2(tmp_path):
    ingest(["olmo:drop-nfl"], tmp_path / "nfl", IngestConfig(progress=False, chunk_tokens=128, limit=2))
    cfg = StructureConfig(mode="model", limit=3, max_new_tokens=48, progress=False, batch_size=3)
    card = structure(tmp_path / "nfl", tmp_path / "qa", cfg)  # loads the embedded SmolLM2 itself
    t = card["reconciliation"]["totals"]
    assert t["read"] == 3 and t["kept"] + t["quarantined"] == 3
    out = list(read_records(tmp_path / "qa"))
    passages = {r.id: r.text for r in read_records(tmp_path / "nfl")}
    for r in out:  # every kept record is well formed and grounded in its own passage
        assert r.kind == "qa" and r.meta["from_id"] in passages and r.domain == "sport"
        assert check_generation(r.question, r.answer, passages[r.meta["from_id"]], cfg) is None
    q = list(iter_jsonl(tmp_path / "qa" / "quarantine.jsonl"))
    assert all(e["reason"] in {"malformed_output", "empty_output", "overlong", "ungrounded"} for e in q)
    assert len(out) >= 1  # the one-shot prompt makes SmolLM2 follow the format on NFL passages


def test_cli_structure(tmp_path):
    write_records(tmp_path / "in", [_raw(P)])
    r = CliRunner().invoke(app, ["data", "structure", str(tmp_path / "in"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert "2 records" in r.output


MD = ("## Practical tip\n\nKeep the Langstroth hive dry through winter.\n\n"
      "### Varroa\n\n- Treat mites in August with oxalic acid.\n- Count mites every 7 days.\n"
      "1. Check the frames.\n2. The queen from Slovenia was calm.\n\nSwarm Season\n============\n\n"
      "In June the colony swarmed twice near Ljubljana.")


def test_cloze_skips_markdown_headings_list_markers_and_stop_words():
    """Every blank any seed can choose is content: never a heading word, a list number or a stop word."""
    import random

    from loralab.data.structure import cloze_spans, template_cloze

    chosen = {template_cloze(_raw(MD), random.Random(s)).answer for s in range(200)}
    assert chosen == {"Langstroth", "August", "7", "Slovenia", "June", "Ljubljana"}
    assert sorted(s.group(MD) for s in cloze_spans(MD)) == sorted(chosen)
    for heading_word in ("Practical", "Varroa", "Swarm", "Season", "Treat", "Count", "Check", "The", "In"):
        assert heading_word not in chosen


def test_every_chunk_yields_records_or_a_reason(tmp_path):
    """A heading-only chunk and a passage with nothing to blank get a quarantine reason; counts reconcile."""
    recs = [_raw(MD, "md"), _raw("## Only A Heading", "h"), _raw("- Item One\n- Item Two", "l")]
    write_records(tmp_path / "in", recs)
    card = structure(tmp_path / "in", tmp_path / "out", CFG)
    q = list(iter_jsonl(tmp_path / "out" / "quarantine.jsonl"))
    assert [(e["location"]["line"], e["reason"]) for e in q] == [(2, "no_template"), (3, "no_template")]
    out = list(read_records(tmp_path / "out"))
    assert {r.meta["from_id"] for r in out} == {recs[0].id}
    t = card["reconciliation"]["totals"]
    assert (t["read"], t["kept"], t["quarantined"], t["balanced"]) == (3, 1, 2, True)
    assert t["records"] == len(out) == 2  # continue + cloze from the one usable passage
