"""`loralab study` end to end on the tiny model: runs, resume, failures, a user's own domain,
report = run folders, statistics that hold together."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from typer.testing import CliRunner

from loralab.cli import app
from loralab.study import runner
from loralab.study.spec import expand, parse_spec

TOPICS = ["hive inspection", "queen rearing", "varroa mites", "honey harvest", "swarm control", "winter feeding",
          "smoker use", "brood frames"]


def bee_corpus(folder):
    """A small corpus of a domain that is not packaged: markdown notes, one document per file."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(TOPICS):
        body = " ".join(f"Beekeepers check the {t} every week in spring because colony number {i} needs it. "
                        f"The apiary notes say the {t} went well when the bees stayed calm on day {d}."
                        for d in range(4))
        (folder / f"note{i}.md").write_text(f"# {t.title()}\n\n{body}\n", encoding="utf-8")
    return folder


def make_spec(bees) -> dict:
    (bees.parent / "broken.jsonl").write_text("not json\n{\"half\": \n", encoding="utf-8")
    return {
        "name": "tiny",
        "model": "tiny-random",
        "data": {"sources": ["olmo:drop-nfl"], "domain": "sport", "limit": 12, "chunk_tokens": 96, "eval_docs": 0.3},
        "train": {"steps": 2, "rank": 2, "batch_size": 2, "max_seq_len": 96, "eval_frac": 0.0, "save_every": 0},
        "eval": {"suite": "quick", "limit": 2, "prompts": 2, "tasks": ["arc_easy"], "gen_tasks": [],
                 "foreign": ["medical", "beekeeping"], "intruders": False},
        "variants": {
            "raw": {},
            "qa": {"data": {"structure": {"mode": "template"}, "select": ["random:50"]}},
            # a source with no usable line: the spec is valid, the run fails when it reads its data
            "broken": {"data": {"sources": [str(bees.parent / "broken.jsonl")]}},
            "bee": {"data": {"sources": [str(bees)], "domain": "beekeeping", "eval_docs": 0.4}},
        },
        "axes": {"variant": ["raw", "qa", "broken", "bee"]},
    }


def _metrics(root, rid):
    return json.loads((root / "runs" / rid / "metrics.json").read_text())


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("studies")
    spec = parse_spec(make_spec(bee_corpus(out / "bees")))
    runs = {r.labels["variant"]: r for r in expand(spec)}
    root = runner.study_dir(spec, out)
    events: list[tuple[str, str]] = []
    log = lambda kind, run, st: events.append((kind, run.labels["variant"]))  # noqa: E731
    # first pass stops after one run, as an interrupted study would: raw is measured alone
    runner.run_study(spec, out, progress=False, only=[runs["raw"].id], on_event=log)
    first = list(events)
    alone = _metrics(root, runs["raw"].id)
    events.clear()
    states = runner.run_study(spec, out, progress=False, on_event=log)
    second = list(events)
    # measure raw again, now in one evaluation group with qa (their adapters are kept, not retrained)
    for name in ("raw", "qa"):
        for f in ("status.json", "metrics.json"):
            (root / "runs" / runs[name].id / f).unlink()
    runner.run_study(spec, out, progress=False, only=[runs["raw"].id, runs["qa"].id])
    grouped = _metrics(root, runs["raw"].id)
    # the CLI on the finished study: the failed run is retried, fails again, the exit status says so
    (out / "spec.yaml").write_text(yaml.safe_dump(spec.model_dump(mode="json")), encoding="utf-8")
    cli = CliRunner().invoke(app, ["study", str(out / "spec.yaml"), "--out", str(out)])
    page = root / "report.html"
    return {"spec": spec, "runs": runs, "first": first, "second": second, "states": states, "root": root,
            "page": page, "alone": alone, "grouped": grouped, "cli": cli}


def test_rerun_completes_only_the_missing_runs(study):
    assert study["first"] == [("start", "raw"), ("done", "raw")]
    assert ("skip", "raw") in study["second"]
    assert ("start", "raw") not in study["second"]
    assert ("done", "qa") in study["second"] and ("done", "bee") in study["second"]


def test_failing_run_is_recorded_and_others_continue(study):
    broken = study["runs"]["broken"]
    st = json.loads((study["root"] / "runs" / broken.id / "status.json").read_text())
    assert st["state"] == "failed" and st["error"] and "Traceback" in st["traceback"]
    assert study["states"][study["runs"]["qa"].id]["state"] == "done"


def test_run_folder_layout(study):
    for name in ("raw", "qa", "bee"):
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
    assert rows[study["runs"]["broken"].id]["error"] == json.loads(
        (study["root"] / "runs" / study["runs"]["broken"].id / "status.json").read_text())["error"][:len(
            rows[study["runs"]["broken"].id]["error"])] != ""
    assert rows[study["runs"]["qa"].id]["error"] == ""
    html = study["page"].read_text()
    assert "SEEDED 2-layer".lower() in html.lower() and "Holm" in html  # which weights; which correction
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
        assert rows == 1 + 4
        shot = tmp_path / "report.png"
        page.screenshot(path=str(shot), full_page=True)
        browser.close()
    assert shot.stat().st_size > 20_000


def test_held_out_qa_measured_for_every_run_by_one_procedure(study):
    for name in ("raw", "qa"):  # raw trains on text, qa on Q&A: both measured on the same held-out Q&A
        m = _metrics(study["root"], study["runs"][name].id)
        q = m["in_domain"]["structured"]
        assert math.isclose(q["gain"], q["base_loss"] - q["adapter_loss"], rel_tol=1e-9, abs_tol=1e-12)
        assert q["records"] > 0 and "heldout-qa" in q["source"]
    src = {_metrics(study["root"], study["runs"][n].id)["in_domain"]["structured"]["source"] for n in ("raw", "qa")}
    assert len(src) == 1


def test_a_runs_numbers_are_the_same_alone_or_in_a_group(study):
    alone, grouped = study["alone"], study["grouped"]
    for form in ("raw", "structured"):
        a, g = alone["in_domain"][form], grouped["in_domain"][form]
        for k in ("base_loss", "adapter_loss", "gain", "records"):
            assert math.isclose(a[k], g[k], rel_tol=1e-9, abs_tol=1e-12), (form, k)
        assert a["gain_ci"] == pytest.approx(g["gain_ci"], rel=1e-9, abs=1e-12)
    assert alone["items"]["in_domain.structured"] == grouped["items"]["in_domain.structured"]


def test_every_interval_in_results_csv_contains_its_point_estimate(study):
    rows = list(csv.DictReader(open(study["root"] / "results.csv")))
    checked = 0
    for row in rows:
        for col, lo in row.items():
            if not col.endswith("_ci.lo") or lo in ("", None):
                continue
            point, hi = float(row[col[: -len("_ci.lo")]]), float(row[col[:-3] + ".hi"])
            if math.isnan(point):
                continue
            assert float(lo) <= point <= hi, (row["id"], col, lo, point, hi)
            checked += 1
    kinds = {c.split(".")[-2] for c in rows[0] if c.endswith("_ci.lo")}
    assert {"gain_ci", "delta_ci", "kl_ci", "js_ci"} <= kinds and checked >= 12


def test_findings_are_paired_and_holm_corrected(study):
    f = json.loads((study["root"] / "findings.json").read_text())
    assert f["correction"] == "holm" and "Holm" in f["note"]
    cmps = f["comparisons"]
    assert cmps and all(c["lo"] <= c["mean"] <= c["hi"] and c["p_adj"] >= c["p"] for c in cmps)
    raw, qa = (_metrics(study["root"], study["runs"][n].id) for n in ("raw", "qa"))
    c = next(c for c in cmps if {c["a"], c["b"]} == {"raw", "qa"} and c["measure"] == "gain.raw")
    sign = 1 if c["a"] == "raw" else -1  # a − b, paired on the same records: base losses cancel
    want = sign * (raw["in_domain"]["raw"]["gain"] - qa["in_domain"]["raw"]["gain"])
    assert math.isclose(c["mean"], want, rel_tol=1e-9, abs_tol=1e-12)
    # the two runs' gains come from different held-out documents than bee's: never paired with it
    assert not any("bee" in (c["a"], c["b"]) and c["measure"].startswith("gain") for c in cmps)


def test_forgetting_leaves_out_own_domain_tasks(tiny, tmp_path):
    from loralab.evaluate import EvalConfig
    from loralab.evaluate.run import _task_block
    from loralab.evaluate.tasks import get

    cfg = EvalConfig(out=str(tmp_path), tasks=["arc_easy", "sciq"], limit=2, contamination=False)
    mc = {n: get(n) for n in ("arc_easy", "sciq")}
    res = {"mc": {n: t.evaluate(tiny, t.items(2, 0), progress=False) for n, t in mc.items()}, "gen": {}}
    _, _, f_sci = _task_block(res, res, cfg, "science")
    _, _, f_sport = _task_block(res, res, cfg, "sport")
    assert f_sci["tasks"] == ["arc_easy"] and f_sci["excluded_own_domain"] == ["sciq"]
    assert f_sport["tasks"] == ["arc_easy", "sciq"] and f_sport["excluded_own_domain"] == []


def test_a_domain_that_is_not_packaged_runs_to_a_full_report(study):
    bee = _metrics(study["root"], study["runs"]["bee"].id)
    raw = _metrics(study["root"], study["runs"]["raw"].id)
    assert bee["in_domain"]["raw"]["records"] > 0 and bee["in_domain"]["structured"]["records"] > 0
    assert "heldout-" in bee["in_domain"]["raw"]["source"]
    assert set(bee["contamination"]) == {"medical"}  # packaged foreign domain for the user's adapter
    assert raw["contamination"]["beekeeping"]["prompts"] == 2  # the user's domain, foreign to sport
    assert "bee" in study["page"].read_text()


def test_the_cli_exits_non_zero_with_a_summary_when_a_run_fails(study):
    r = study["cli"]
    assert r.exit_code == 1, r.output
    out = " ".join(r.output.split())
    assert f"3 done, 1 failed: {study['runs']['broken'].id}" in out
    assert "Findings" in out and "Largest in-domain gain" in out  # the answer is printed, not only the path


def test_runs_of_an_earlier_spec_are_left_out_of_the_report(tmp_path):
    from loralab.io import write_json
    from loralab.study.report import load_runs

    write_json(tmp_path / "study.json", {"runs": [{"id": "aaa", "labels": {"variant": "now"}}]})
    for rid in ("aaa", "old"):
        write_json(tmp_path / "runs" / rid / "config.json", {"labels": {"variant": rid}})
    assert [r["id"] for r in load_runs(tmp_path)] == ["aaa"]


def test_noisy_then_cleaned_data_passes_through_clean_after_corrupt(tmp_path):
    import re

    from loralab.data.records import read_records
    from loralab.study.data import prepare, steps
    from loralab.study.spec import DataSpec

    d = DataSpec(sources=["olmo:drop-nfl"], domain="sport", limit=6, chunk_tokens=96, eval_docs=0.3, corrupt=0.3,
                 clean={"near_dup": 1.0, "language": None, "min_chars": 0}, heldout_qa=None)
    assert steps(d) == ["ingest", "holdout", "corrupt", "clean", "score"]
    folders = prepare(d, "tiny-random", 0, tmp_path / "data", progress=False)
    made = {p.name.split("-")[0]: p for p in (tmp_path / "data").iterdir()}
    card = json.loads((made["clean"] / "data_card.json").read_text())
    assert str(made["corrupt"]) in json.dumps(card)  # clean read the corrupted folder
    corrupt_card = json.loads((made["corrupt"] / "data_card.json").read_text())
    assert str(folders["pool"]) in json.dumps(corrupt_card)  # and corrupt read the clean pool
    broken = re.compile(r"[a-z]-\n[a-z]")  # the noise's hyphenation at a line break; clean joins it back
    noisy = sum(bool(broken.search(r.text)) for r in read_records(made["corrupt"]))
    after = sum(bool(broken.search(r.text)) for r in read_records(folders["train"]))
    assert noisy > 0 and after == 0
    # the order is in the digests: swapping it cannot reuse these folders
    assert folders["train"].parent == tmp_path / "data"
