"""Seeds, whole-model runs, an `also` crossing and FINDINGS.md on a tiny study: every number
in FINDINGS.md is re-derived from findings/results.csv, the dry run estimates its time."""

from __future__ import annotations

import csv
import re

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from loralab.cli import app
from loralab.study.spec import expand, parse_spec

SPEC = {
    "name": "tinyfind",
    "model": "tiny-random",
    "seeds": [0, 1],
    "data": {"sources": ["olmo:drop-nfl"], "domain": "sport", "limit": 12, "chunk_tokens": 96, "eval_docs": 0.3},
    "train": {"steps": 2, "rank": 2, "batch_size": 2, "max_seq_len": 96, "eval_frac": 0.0, "save_every": 0},
    "eval": {"suite": "quick", "limit": 3, "prompts": 2, "tasks": ["arc_easy"], "gen_tasks": [],
             "foreign": ["medical"], "intruders": False},
    "groups": {"dose": {"small": {}, "large": {"train": {"steps": 4}}}},
    "variants": {"raw": {}, "qa": {"data": {"structure": {"mode": "template"}}},
                 "ifd": {"data": {"structure": {"mode": "template"}, "select": ["ifd_topk:50"]}},
                 "ifd_weak": {"data": {"structure": {"mode": "template"}, "select": ["ifd_topk:50"],
                                       "scorer": "tiny-random@layers=1"}},
                 "full": {"data": {"structure": {"mode": "template"}}, "train": {"method": "full", "lr": 1e-4}}},
    "axes": {"variant": ["raw", "qa", "full", "ifd", "ifd_weak"], "dose": ["small"]},
    "also": [{"variant": ["qa"], "dose": ["large"]}],
    "findings": {"title": "Tiny findings", "margins": {"gain": 0.05, "forgetting": 2}, "questions": [
        {"id": "content", "question": "Q&A or raw?", "a": {"variant": "qa"}, "b": {"variant": "raw"},
         "measures": ["gain.raw", "gain.structured", "forgetting", "kl.medical"], "published": "X et al.",
         "expect": {"gain.structured": 1}},
        {"id": "method", "question": "Full or LoRA?", "a": {"variant": "full"}, "b": {"variant": "qa"},
         "measures": ["gain.raw", "forgetting"]},
        {"id": "dose", "question": "More steps?", "a": {"dose": "large"}, "b": {"dose": "small"},
         "measures": ["gain.raw"]}],
        "scorers": [{"a": {"variant": "ifd_weak"}, "b": {"variant": "ifd"}, "top": 0.5, "published": "S. et al."}]},
}


def test_also_crossing_and_findings_block_are_validated():
    runs = expand(parse_spec(SPEC))
    got = sorted((r.labels["variant"], r.labels["dose"], r.labels["seed"]) for r in runs)
    assert got == sorted([(v, "small", s) for v in ("raw", "qa", "full", "ifd", "ifd_weak") for s in (0, 1)] +
                         [("qa", "large", s) for s in (0, 1)])
    bad = {**SPEC, "findings": {"questions": [{**SPEC["findings"]["questions"][0], "a": {"variant": "nope"}}]}}
    with pytest.raises(Exception, match="nope"):
        parse_spec(bad)
    with pytest.raises(Exception, match="also"):
        parse_spec({**SPEC, "also": [{"colour": ["red"]}]})


def _md_rows(md: str):
    """(the question heading above it, cells) of every comparison row."""
    heading = ""
    for line in md.splitlines():
        if line.startswith("## "):
            heading = line[3:]
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[0] not in ("a", "---"):
            yield heading, cells


def _csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


NAMES = {"in-domain gain on held-out text (nats/token)": "gain.raw",
         "in-domain gain on held-out Q&A (nats/token)": "gain.structured", "general accuracy (points)": "forgetting"}


def _measure(name: str) -> str:
    m = re.fullmatch(r"KL on foreign prompts \((\w+)\) \(nats/token\)", name)
    return f"kl.{m.group(1)}" if m else NAMES[name]


def _labels(cell: str) -> dict:
    return dict(x.split("=", 1) for x in cell.split(", ")) if "=" in cell else {"variant": cell}


def _close(shown: str, value: float) -> bool:
    """A number shown with d decimals equals `value` to within half its last digit."""
    d = len(shown.split(".")[1]) if "." in shown else 0
    return abs(float(shown) - value) <= 0.5 * 10 ** -d + 1e-9


def _holm(ps: list[float]) -> list[float]:
    """Holm's step-down adjustment, written out independently of loralab's."""
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    out, running = [0.0] * len(ps), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(ps) - rank) * ps[i]))
        out[i] = running
    return out


def rederive(md: str, rows: list[dict], margins: dict, expect: dict[str, dict], alpha: float = 0.05) -> int:
    """Every FINDINGS.md table row re-derived from the per-run values in results.csv with scipy:
    the mean over seeds of a's − b's value, its t interval, its t p-value, the TOST p against the
    declared margin, Holm over the declared family (its size read from the header, the tests not
    measured counting as p = 1) and the verdict; returns the rows checked."""
    from scipy import stats as sps

    n_tests = int(re.search(r"(\d+) tests in all", md).group(1))
    found = []
    for heading, cells in _md_rows(md):
        a, b, measure, mean, ci, _items, n_seeds, p_t, p_holm, eq, _mde, verdict = cells
        if mean == "n/a":
            continue
        what = _measure(measure)
        la, lb = _labels(a), _labels(b)

        def runs(lab):
            return {int(r["label.seed"]) if r.get("label.seed") else 0: r for r in rows if r["state"] == "done"
                    and all(r.get(f"label.{k}") == v for k, v in lab.items())}

        ra, rb = runs(la), runs(lb)
        seeds = sorted(set(ra) & set(rb))
        assert len(seeds) == int(n_seeds), (a, b, measure)
        d = np.array([_per_run(ra[s], what) - _per_run(rb[s], what) for s in seeds])
        assert _close(mean, d.mean()), (a, b, measure, mean, d.mean())
        margin = margins.get(what, margins.get(what.partition(".")[0]))
        if d.size < 2:  # one seed: no interval, no test (counted in the family as p = 1)
            assert ci == "[n/a, n/a]" and p_t == "n/a", (a, b, measure, ci, p_t)
            found.append((cells, what, d.mean(), 1.0, 1.0 if margin else None, None, d))
            continue
        if np.all(d == d[0]):  # no spread across seeds: no interval; p 1 for a zero difference, else untestable
            assert ci == "[n/a, n/a]" and p_t == ("1" if d[0] == 0 else "n/a"), (a, b, measure, ci, p_t)
            found.append((cells, what, d.mean(), 1.0, 1.0 if margin else None, None, d))
            continue
        t = sps.ttest_1samp(d, 0.0)
        lo, hi = t.confidence_interval(0.95)
        shown_lo, shown_hi = ci.strip("[]").split(", ")
        assert _close(shown_lo, lo) and _close(shown_hi, hi), (a, b, measure, ci, lo, hi)
        p = float(t.pvalue)
        assert p_t == f"{p:.2g}", (a, b, measure, p_t, p)
        p_eq = None
        if margin:
            se = d.std(ddof=1) / np.sqrt(d.size)
            p_eq = max(sps.t.sf((d.mean() + margin) / se, d.size - 1), sps.t.cdf((d.mean() - margin) / se, d.size - 1))
        found.append((cells, what, d.mean(), p, p_eq, (expect.get(heading) or {}).get(what), d))
    tests = [f[3] for f in found] + [f[4] for f in found if f[4] is not None]
    adj = _holm(tests + [1.0] * (n_tests - len(tests)))
    k = len(found)
    for i, (cells, what, m, p, p_eq, sign, d) in enumerate(found):
        assert cells[8] == f"{adj[i]:.2g}", (cells, adj[i])
        eq_adj = None
        if p_eq is not None:
            eq_adj = adj[k]
            k += 1
            assert cells[9].startswith(f"{eq_adj:.2g} ("), (cells, eq_adj)
        verdict = cells[11]
        if verdict.startswith(("not a comparison", "repeats")):
            continue
        if d.size < 2:
            assert verdict == "one seed so far: no seed-level test"
            continue
        if np.all(d == d[0]):
            assert verdict == ("no measurable difference" if d[0] == 0 else
                               "every seed gave the same difference: no spread to test against (not testable)")
            continue
        if adj[i] <= alpha:
            assert verdict == ("finding" if not sign else "confirms" if np.sign(m) == sign else "contradicts")
        elif eq_adj is not None and eq_adj <= alpha:
            assert verdict == "equivalent"
        else:
            assert verdict in ("no measurable difference", "not significant after Holm (unadjusted interval excludes 0)")
    return len(found)


def _per_run(row: dict, measure: str) -> float:
    kind, _, arg = measure.partition(".")
    if kind == "gain":  # a − b of gains = b's adapter loss − a's (added back below with the sign)
        return -float(row[f"in_domain.{arg}.adapter_loss"])
    if kind == "forgetting":
        return 100 * float(row["forgetting.adapter_acc"])
    return float(row[f"contamination.{arg}.kl"])


@pytest.mark.slow  # twelve tiny-model runs, a full-model one among them
def test_findings_md_is_rederived_from_results_csv(tmp_path):
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(SPEC), encoding="utf-8")
    dry = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "out"), "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert re.search(r"estimated run time of the 12 pending runs on this machine: \d+ min", dry.output)
    assert "findings: 7 declared comparisons and 6 equivalence tests" in dry.output
    res = CliRunner().invoke(app, ["study", str(spec), "--out", str(tmp_path / "out"),
                                   "--findings", str(tmp_path / "FINDINGS.md")])
    assert res.exit_code == 0, res.output
    md = (tmp_path / "FINDINGS.md").read_text()
    rows = _csv(tmp_path / "findings" / "results.csv")
    assert (tmp_path / "findings" / "report.html").exists() and len(rows) == 12
    assert "Tiny findings" in md and "Published: X et al." in md and "12 done of 12" in md

    def run_of(variant, dose, seed):
        return next(r for r in rows if r["label.variant"] == variant and r["label.dose"] == dose
                    and r["label.seed"] == str(seed))

    expect = {q["question"]: q.get("expect", {}) for q in SPEC["findings"]["questions"]}
    seen = rederive(md, rows, SPEC["findings"]["margins"], expect)
    assert seen == 4 + 2 + 1  # content (qa vs raw at the small dose), method, dose
    # the declared family: 7 comparisons (the spec's, whatever ran) and 6 equivalence tests (kl has no margin)
    assert "declares 7 comparisons" in md and "13 tests in all" in md
    # the whole-model run was evaluated like the adapters and has dense ΔW numbers
    full = run_of("full", "small", 0)
    assert full["state"] == "done" and float(full["weights.delta_fro"]) > 0

    # weak-to-strong: the table's rho is score.agreement on the two runs' scored folders
    import json

    from loralab.data.records import read_records
    from loralab.score import agreement

    assert "Weak-to-strong scoring" in md and "Published: S. et al." in md
    computed = json.loads((tmp_path / "findings" / "findings-computed.json").read_text())["scorers"]
    assert len(computed) == 2 and {g["seed"] for g in computed} == {0, 1}
    root = tmp_path / "out" / "tinyfind" / "runs"
    for g in computed:
        folders = {}
        for variant in ("ifd_weak", "ifd"):
            rid = run_of(variant, "small", g["seed"])["id"]
            folders[variant] = {r.id: r.meta["score"] for r in read_records(
                json.loads((root / rid / "data.json").read_text())["scored"])}
        ids = sorted(set(folders["ifd_weak"]) & set(folders["ifd"]))
        want = agreement([folders["ifd_weak"][i] for i in ids], [folders["ifd"][i] for i in ids], fracs=(0.5,))
        assert g["rho_ifd"] == pytest.approx(want["spearman_ifd"]["rho"])
        assert f"| {g['rho_ifd']:.3f} |" in md


def test_committed_findings_agree_with_their_results_csv():
    """FINDINGS.md in the repository, re-derived from findings/results.csv beside it."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    if not (root / "FINDINGS.md").exists():
        pytest.skip("no FINDINGS.md committed")
    import json

    md = (root / "FINDINGS.md").read_text()
    rows = _csv(root / "findings" / "results.csv")
    computed = json.loads((root / "findings" / "findings-computed.json").read_text())
    expect = {q["question"]["question"]: q["question"].get("expect", {}) for q in computed["questions"]}
    assert rederive(md, rows, computed["margins"], expect, computed["alpha"]) > 0


def test_runs_with_identical_training_are_not_a_comparison(tmp_path):
    """Two variants that trained with the same settings on byte-identical records (a source that
    is already Q&A makes "raw" and "Q&A" the same) are flagged, not compared; other data or
    other settings are a comparison."""
    from loralab.study.findings import same_training

    def variant(records: str, train: dict, name: str, **data) -> dict:
        folder = tmp_path / name
        folder.mkdir()
        (folder / "records.jsonl").write_text(records, encoding="utf-8")
        config = {"id": name, "labels": {"variant": name}, "model": "m", "train": train,
                  "data": {"sources": ["s"], "structure": None, "fmt": "chat", **data}}
        run = {"config": config, "metrics": {"data": {"train": str(folder)}}}
        return {"label": name, "seeds": {0: run}}

    a = variant('{"q": 1}\n', {"steps": 10}, "a")
    # a step that only builds the records (structure) may differ: the records say what it did
    assert same_training(a, variant('{"q": 1}\n', {"steps": 10}, "twin", structure={"mode": "template"}))
    # the same records rendered another way for training (JSON instead of chat) are another model
    assert not same_training(a, variant('{"q": 1}\n', {"steps": 10}, "json", fmt="json"))
    assert not same_training(a, variant('{"q": 1}\n', {"steps": 10}, "other_eval_split", eval_docs=0.3))
    assert not same_training(a, variant('{"q": 2}\n', {"steps": 10}, "other_data"))
    assert not same_training(a, variant('{"q": 1}\n', {"steps": 40}, "other_steps"))


def test_a_row_with_another_rows_numbers_is_marked_and_not_counted():
    """Held-out text and held-out Q&A that are the same items (a source already in Q&A form)
    give one measurement twice: the second row is marked and left out of the Holm family."""
    from loralab.study.findings import REPEAT, SAME, counted, mark_repeats

    def row(measure, per_seed, n_items=50, verdict=None):
        c = {"measure": measure, "per_seed": per_seed, "n_items": n_items}
        if verdict:
            c["verdict"] = verdict
        return c

    rows = [row("gain.raw", [0.1, 0.2, 0.3]), row("gain.structured", [0.1, 0.2, 0.3]),
            row("gain.structured", [0.1, 0.2, 0.3], n_items=40),  # other items: another measurement
            row("forgetting", [0.0, 0.0, 0.0], verdict=SAME), row("kl.sport", [0.0, 0.0, 0.0])]
    mark_repeats(rows)
    assert [r.get("verdict") for r in rows] == [None, REPEAT, None, SAME, None]
    assert [counted(r) for r in rows] == [True, False, True, False, True]
    rows = [row("gain.raw", [0.1, 0.2, 0.3]), row("gain.structured", [0.1, 0.2, 0.3])]
    mark_repeats(rows, prefer={"gain.structured"})  # the measure with a published direction is kept
    assert [r.get("verdict") for r in rows] == [REPEAT, None]


def test_the_family_is_declared_by_the_spec_not_by_the_results():
    """The Holm family comes from the spec's matrix, questions, `where` and measures before any run:
    a measure a pair cannot carry (KL on a run's own domain, Q&A gain without held-out Q&A) is not
    in it; a comparison not measured yet counts as p = 1; margins are checked."""
    from loralab.study.findings import FindingsSpec, compute, family

    spec = {**SPEC, "groups": {**SPEC["groups"], "domain": {"sport": {}, "medical": {
        "data": {"sources": ["olmo:medmcqa"], "domain": "medical"}}}},
            "axes": {**SPEC["axes"], "domain": ["sport", "medical"]},
            "eval": {**SPEC["eval"], "foreign": ["sport", "medical"]}}
    fs = FindingsSpec.model_validate({**spec["findings"], "questions": [
        {"id": "content", "question": "Q&A or raw?", "a": {"variant": "qa"}, "b": {"variant": "raw"},
         "where": {"domain": "sport"}, "measures": ["gain.structured", "forgetting", "kl.medical", "kl.sport"]},
        {"id": "method", "question": "Full or LoRA?", "a": {"variant": "full"}, "b": {"variant": "qa"},
         "measures": ["kl.medical", "kl.sport"]}]})
    fam = family(spec, fs)
    got = sorted((f["qid"], f["a"].split("variant=")[1].split(",")[0], f["measure"], f["margin"]) for f in fam)
    # content: sport only, and no KL on sport prompts for a sport run; method: each domain's foreign KL
    assert got == [("content", "qa", "forgetting", 0.02), ("content", "qa", "gain.structured", 0.05),
                   ("content", "qa", "kl.medical", None), ("method", "full", "kl.medical", None),
                   ("method", "full", "kl.sport", None)]
    done, fam2 = compute([], fs, spec)  # nothing ran: the family is the same, no rows
    assert fam2 == fam and all(not d["rows"] for d in done)
    bad = {**SPEC, "findings": {**SPEC["findings"], "margins": {"gian": 1}}}
    with pytest.raises(Exception, match="gian"):
        parse_spec(bad)
    bad = {**SPEC, "findings": {"questions": [{**SPEC["findings"]["questions"][0], "where": {"dose": "huge"}}]}}
    with pytest.raises(Exception, match="huge"):
        parse_spec(bad)
