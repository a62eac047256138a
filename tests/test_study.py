"""`loralab study` end to end on the tiny model: runs, resume, failures, report = run folders."""

from __future__ import annotations

import csv
import json
import math

import pytest

from loralab.study import report, runner
from loralab.study.spec import expand, parse_spec

SPEC = {
    "name": "tiny",
    "model": "tiny-random",
    "data": {"sources": ["olmo:drop-nfl"], "domain": "sport", "limit": 12, "chunk_tokens": 96, "eval_docs": 0.3},
    "train": {"steps": 2, "rank": 2, "batch_size": 2, "max_seq_len": 96, "eval_frac": 0.0, "save_every": 0},
    "eval": {"suite": "quick", "limit": 2, "prompts": 1, "tasks": ["arc_easy"], "gen_tasks": [],
             "foreign": ["medical"], "intruders": False},
    "variants": {
        "raw": {},
        "qa": {"data": {"structure": {"mode": "template"}, "select": ["random:50"]}},
        "broken": {"train": {"trigger_mode": "alora"}},  # alora without a trigger: invalid at training
    },
    "axes": {"variant": ["raw", "qa", "broken"]},
}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    spec = parse_spec(SPEC)
    runs = {r.labels["variant"]: r for r in expand(spec)}
    events: list[tuple[str, str]] = []
    log = lambda kind, run, st: events.append((kind, run.labels["variant"]))  # noqa: E731
    # first pass stops after one run, as an interrupted study would
    runner.run_study(spec, out, progress=False, only=[runs["raw"].id], on_event=log)
    first = list(events)
    events.clear()
    states = runner.run_study(spec, out, progress=False, on_event=log)
    page = report.build(runner.study_dir(spec, out))
    return {"spec": spec, "runs": runs, "first": first, "second": events, "states": states,
            "root": runner.study_dir(spec, out), "page": page}


def test_rerun_completes_only_the_missing_runs(study):
    assert study["first"] == [("start", "raw"), ("done", "raw")]
    assert ("skip", "raw") in study["second"]
    assert ("start", "raw") not in study["second"]
    assert ("done", "qa") in study["second"]


def test_failing_run_is_recorded_and_others_continue(study):
    broken = study["runs"]["broken"]
    st = json.loads((study["root"] / "runs" / broken.id / "status.json").read_text())
    assert st["state"] == "failed" and "alora" in st["error"] and "Traceback" in st["traceback"]
    assert study["states"][study["runs"]["qa"].id]["state"] == "done"


def test_run_folder_layout(study):
    for name in ("raw", "qa"):
        d = study["root"] / "runs" / study["runs"][name].id
        assert {"config.json", "status.json", "data.json", "metrics.json", "train"} <= {p.name for p in d.iterdir()}
        assert (d / "train" / "adapter" / "adapter_model.safetensors").exists()
        cfg = json.loads((d / "config.json").read_text())
        assert cfg["id"] == d.name and cfg["labels"] == {"variant": name}


def test_report_matches_run_metrics(study):
    rows = {r["id"]: r for r in csv.DictReader(open(study["root"] / "results.csv"))}
    for name in ("raw", "qa"):
        rid = study["runs"][name].id
        m = json.loads((study["root"] / "runs" / rid / "metrics.json").read_text())
        g = m["in_domain"]["raw"]
        assert math.isclose(float(rows[rid]["in_domain.raw.gain"]), g["gain"], rel_tol=1e-12)
        assert math.isclose(g["gain"], g["base_loss"] - g["adapter_loss"], rel_tol=1e-9, abs_tol=1e-12)
        assert g["gain_ci"][0] <= g["gain"] <= g["gain_ci"][1]
        assert float(rows[rid]["contamination.medical.kl"]) == m["contamination"]["medical"]["kl"] >= 0
        assert rows[rid]["state"] == "done"
    assert rows[study["runs"]["broken"].id]["state"] == "failed"
    html = study["page"].read_text()
    assert html.count("<img") >= 3 and "data:image/png;base64," in html
    for name in ("raw", "qa"):
        assert study["runs"][name].id in html
    qa = json.loads((study["root"] / "runs" / study["runs"]["qa"].id / "metrics.json").read_text())
    raw = json.loads((study["root"] / "runs" / study["runs"]["raw"].id / "metrics.json").read_text())
    assert qa["data"]["ifd_mean"] is not None and raw["data"]["ifd_mean"] is None  # raw text has no IFD


def test_report_renders_in_chromium(study, tmp_path):
    shutil = pytest.importorskip("shutil")
    exe = shutil.which("chromium")
    sync_api = pytest.importorskip("playwright.sync_api")
    if exe is None:
        pytest.skip("Debian chromium is not installed (make install-browser)")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        page.goto(study["page"].resolve().as_uri())
        assert page.title().startswith("loralab study")
        imgs = page.eval_on_selector_all("img", "els => els.map(e => [e.naturalWidth, e.naturalHeight])")
        assert imgs and all(w > 100 and h > 100 for w, h in imgs)  # every plot decoded
        rows = page.eval_on_selector_all("#runs tr", "els => els.length")
        assert rows == 1 + 3
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000


def test_held_out_qa_measured_for_structured_runs(study):
    for name in ("qa",):  # (raw ran alone in the interrupted pass, before any Q&A existed)
        m = json.loads((study["root"] / "runs" / study["runs"][name].id / "metrics.json").read_text())
        q = m["in_domain"]["structured"]
        assert math.isclose(q["gain"], q["base_loss"] - q["adapter_loss"], rel_tol=1e-9, abs_tol=1e-12)
        assert q["records"] > 0 and "heldout-structure" in q["source"]


def test_runs_of_an_earlier_spec_are_left_out_of_the_report(tmp_path):
    from loralab.io import write_json
    from loralab.study.report import load_runs

    write_json(tmp_path / "study.json", {"runs": [{"id": "aaa", "labels": {"variant": "now"}}]})
    for rid in ("aaa", "old"):
        write_json(tmp_path / "runs" / rid / "config.json", {"labels": {"variant": rid}})
    assert [r["id"] for r in load_runs(tmp_path)] == ["aaa"]
