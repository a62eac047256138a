"""Clean repairs and removes with reasons; corrupt injects seeded, linked noise."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from loralab.cli import app
from loralab.data import noise
from loralab.data.clean import CleanConfig, clean
from loralab.data.corrupt import CorruptConfig, corrupt
from loralab.data.ingest import IngestConfig, ingest
from loralab.data.records import Record, read_records, write_records
from loralab.io import iter_jsonl

A = ("The Lions scored first in the first quarter with a field goal, and then the Bears answered "
     "with a long touchdown pass that was caught near the sideline by their best receiver.")
FRENCH = ("Le chat noir dort sur le canapé rouge pendant que la pluie tombe doucement sur les toits "
          "gris de la vieille ville, loin des bruits et des voitures pressées du matin.")
MIXED = "Thе раper wаs writtеn by thе tеаm оf scientists whо wоrked оn thе prоject fоr mаny уears tоgether."
GARBAGE = "\ufffd\ufffd□□ ■■ \ufffd\x07\x07 ▓▓▓ ░░ ◆◆ \ufffd\ufffd\ufffd ok ▲▲▲"
HEADER = "THE DAILY GAZETTE"
TERSE = "Thickness of cementum near apex: A. 1-2 μm B. 2-3 μm C. Simple pocket D. Compound pocket E. None"
GERMAN = "Der Hund schläft auf dem Sofa und die Katze sitzt mit dem Kind im Garten, denn es ist nicht kalt."
RUSSIAN = "Собака спит на диване, а кошка сидит в саду вместе с ребёнком, потому что сегодня тепло."


def _chunk(i: int, body: str) -> Record:
    text = f"{HEADER}\n{body}\n\n{i + 1}"
    return Record(kind="raw", text=text, source={"path": "news.txt", "doc": "news", "chunk": i})


CASES = [  # (record, expected reason or None for kept, expected repair flags)
    (Record(kind="raw", text=A, source={"doc": "a"}), None, []),
    (Record(kind="raw", text=A, source={"doc": "a2"}), "duplicate", []),
    (Record(kind="raw", text=A.replace("receiver.", "receivers."), source={"doc": "a3"}), "near_duplicate", []),
    (Record(kind="raw", text="The cafÃ© on the corner is where the team and all of their friends meet after the game.",
            source={"doc": "b"}), None, ["ftfy"]),
    (Record(kind="raw", text="This exam-\nple shows that a word broken at the end of a line is joined again by the cleaner.",
            source={"doc": "c"}), None, ["dehyphenated"]),
    (Record(kind="raw", text=GARBAGE, source={"doc": "d"}), "garbage", []),
    (Record(kind="raw", text=MIXED, source={"doc": "e"}), "mixed_scripts", []),
    (Record(kind="raw", text=FRENCH, source={"doc": "f"}), "wrong_language", []),
    (Record(kind="qa", question=TERSE, answer="2-3 μm", source={"doc": "f2"}), None, []),
    (Record(kind="qa", question="Hi?", answer="Yo.", source={"doc": "g"}), "too_short", []),
    (Record(kind="qa", question="Who kicked the field goal in the first quarter?", answer="Jason Hanson",
            source={"doc": "h"}), None, []),
] + [(_chunk(i, body), None, ["boilerplate_removed"]) for i, body in enumerate([
    "Detroit opened the season in Tampa against the Buccaneers on a warm afternoon.",
    "The defence held firm in the second half and forced two turnovers near midfield.",
    "Fans in the stadium stayed until the final whistle to celebrate the comeback win.",
])]


@pytest.fixture(scope="module")
def cleaned(tmp_path_factory):
    d = tmp_path_factory.mktemp("clean")
    write_records(d / "in", [c[0] for c in CASES])
    return d, clean(d / "in", d / "out", CleanConfig(progress=False))


def test_every_removal_has_its_reason(cleaned):
    d, card = cleaned
    q = {e["location"]["line"]: e for e in iter_jsonl(d / "out" / "quarantine.jsonl")}
    expected = {i + 1: reason for i, (_, reason, _) in enumerate(CASES) if reason}
    assert {line: e["reason"] for line, e in q.items()} == expected
    assert "line 1" in q[2]["detail"] and CASES[0][0].id in q[3]["detail"]  # names what it duplicates
    assert all(e["stage"] == "clean" and e["location"]["id"] == CASES[e["location"]["line"] - 1][0].id
               for e in q.values())
    rec = card["reconciliation"]["totals"]
    assert rec["read"] == len(CASES) == rec["kept"] + rec["quarantined"] and rec["quarantined"] == len(expected)
    assert card["checks"] == {"records_match": True, "quarantine_match": True, "balanced": True}


def test_repairs_are_flagged_and_linked(cleaned):
    d, _ = cleaned
    out = list(read_records(d / "out"))
    kept_cases = [c for c in CASES if c[1] is None]
    assert len(out) == len(kept_cases)
    for rec, (orig, _, flags) in zip(out, kept_cases):
        assert rec.meta.get("repaired", []) == flags
        assert (rec.meta.get("cleaned_from") == orig.id) == bool(flags)
    by_doc = {r.source["doc"]: r for r in out if r.source["doc"] != "news"}
    assert "café" in by_doc["b"].text and "example shows" in by_doc["c"].text
    news = [r for r in out if r.source["doc"] == "news"]
    assert all(HEADER not in r.text and not r.text.strip()[-1].isdigit() for r in news)
    assert news[0].text == "Detroit opened the season in Tampa against the Buccaneers on a warm afternoon."


def test_language_and_quality_measures():
    langs = [noise.guess_language(t) for t in (A, FRENCH, GERMAN, RUSSIAN, TERSE)]
    assert langs == ["en", "fr", "de", "non_latin", None]  # terse option lists are not judged
    assert noise.mixed_script_ratio(MIXED) > 0.5 and noise.mixed_script_ratio(A) == 0
    assert noise.mixed_script_ratio(TERSE) == 0  # "μm" is a unit, not homoglyph damage
    assert noise.garbage_ratio(GARBAGE) > 0.5 and noise.garbage_ratio(A) == 0
    assert noise.dehyphenate("co-\nordinate well-\nKnown") == ("coordinate well-\nKnown", 1)


def test_near_dup_off_keeps_near_copies(tmp_path):
    write_records(tmp_path / "in", [c[0] for c in CASES[:3]])
    card = clean(tmp_path / "in", tmp_path / "out", CleanConfig(progress=False, near_dup=1.0))
    assert card["records"]["total"] == 2 and card["quarantine"]["by_reason"] == {"duplicate": 1}


def test_corrupt_is_seeded_linked_and_targets_responses(tmp_path):
    recs = [Record(kind="qa", question="Who scored first in the game?", answer=A, source={"doc": "x"}),
            Record(kind="raw", text=A * 3, source={"doc": "y"}),
            Record(kind="chat", messages=[{"role": "user", "content": "Tell me."}, {"role": "assistant", "content": A}])]
    write_records(tmp_path / "in", recs)
    c1 = corrupt(tmp_path / "in", tmp_path / "n1", rate=0.1, seed=7, progress=False)
    corrupt(tmp_path / "in", tmp_path / "n2", rate=0.1, seed=7, progress=False)
    corrupt(tmp_path / "in", tmp_path / "n3", rate=0.1, seed=8, progress=False)
    n1, n2, n3 = (list(read_records(tmp_path / n)) for n in ("n1", "n2", "n3"))
    assert [r.to_json() for r in n1] == [r.to_json() for r in n2]
    assert [r.id for r in n1] != [r.id for r in n3]
    assert [r.meta["corrupted_from"] for r in n1] == [r.id for r in recs]
    assert [r.source for r in n1] == [r.source for r in recs]
    assert n1[0].question == recs[0].question and n1[0].answer != recs[0].answer
    assert n1[2].messages[0].content == "Tell me." and n1[2].messages[1].content != A
    ops = sum(sum(r.meta["corruption"]["ops"].values()) for r in n1)
    chars = len(A) * 5
    assert 0.03 * chars < ops < 0.12 * chars  # about `rate` of the characters, minus no-op draws
    assert c1["reconciliation"]["totals"]["records"] == 3
    cfg = corrupt(tmp_path / "in", tmp_path / "nc", CorruptConfig(rate=0.1, seed=7, progress=False))
    assert [r.id for r in read_records(tmp_path / "nc")] == [r.id for r in n1] and cfg["config"]["rate"] == 0.1
    with pytest.raises(ValueError):
        corrupt(tmp_path / "in", tmp_path / "bad", rate=1.5)
    zero = corrupt(tmp_path / "in", tmp_path / "n0", rate=0.0, seed=7, progress=False)
    assert [r.id for r in read_records(tmp_path / "n0")] == [r.id for r in recs] and zero["checks"]["balanced"]


def test_inject_operations():
    text, ops = noise.inject("modern clothing in the corner " * 40, 0.2, random.Random(0))
    assert set(ops) == {"confuse", "drop_space", "break_line", "hyphenate"}
    assert "-\n" in text and text.count("\n") >= ops["break_line"] + ops["hyphenate"]


def test_cli_pipeline_ingest_corrupt_clean(tmp_path):
    src = tmp_path / "docs.jsonl"
    src.write_text("\n".join(json.dumps({"text": A + f" Game {i} ended late."}) for i in range(6)) + "\n")
    run = CliRunner().invoke
    assert run(app, ["data", "ingest", str(src), "--out", str(tmp_path / "raw")]).exit_code == 0
    r = run(app, ["data", "corrupt", str(tmp_path / "raw"), "--out", str(tmp_path / "noisy"), "--rate", "0.05"])
    assert r.exit_code == 0, r.output
    r = run(app, ["data", "clean", str(tmp_path / "noisy"), "--out", str(tmp_path / "clean"), "--near-dup", "1"])
    assert r.exit_code == 0, r.output
    assert "read = kept + quarantined" in r.output
    card = json.loads((tmp_path / "clean" / "data_card.json").read_text())
    assert [s["stage"] for s in card["stages"]] == ["ingest", "corrupt", "clean"]
    assert card["records"]["total"] + card["quarantine"]["total"] == 6


def test_ingest_then_clean_keeps_split_settings(tmp_path):
    src = tmp_path / "d.jsonl"
    src.write_text("\n".join(json.dumps({"text": A + f" Number {i}."}) for i in range(4)) + "\n")
    ingest([str(src)], tmp_path / "raw", IngestConfig(progress=False, eval_frac=0.5, seed=11))
    card = clean(tmp_path / "raw", tmp_path / "c", CleanConfig(progress=False, near_dup=1.0))
    assert card["split"]["seed"] == 11 and card["split"]["eval_frac"] == 0.5
