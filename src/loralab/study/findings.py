"""FINDINGS.md from a study's run folders: each question's measured answer beside the
published result it confirms or contradicts (`loralab study SPEC --findings FINDINGS.md`).

The spec's `findings` block declares, before anything runs, the questions, their measures and
the equivalence margins:

    findings:
      title: What data makes a small adapter learn without damage
      margins: {gain: 0.05, forgetting: 2, kl: 0.005}   # |a − b| below this is "no difference that matters"
      questions:
        - id: content
          question: Does Q&A made from the passages teach more than the raw passages?
          a: {variant: qa}           # compared a − b, within every other label (each domain)
          b: {variant: raw}
          where: {domain: sport}     # only where the question is meaningful
          measures: [gain.structured, forgetting, kl.medical]
          published: Instruction-formatted data teaches answers better than raw text (...)
          expect: {gain.structured: +1}   # the published direction of a − b, per measure

The family of comparisons is computed from the spec (`family`: its matrix, questions and
measures), not from what has finished. Each comparison is judged at the level of seeds
(`seeds.compare`: paired within seeds by item id, Student t over the per-seed differences),
with one Holm correction over every declared difference test and equivalence test (TOST).
A row is a finding only when its adjusted seed-level p <= alpha (then it confirms or
contradicts the published direction), equivalent when its adjusted TOST p <= alpha, and
otherwise shows the smallest difference the design could have detected. Nothing is written by hand.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..evaluate.seedstats import RESAMPLES, mde, tost
from ..evaluate.stats import NAN, holm
from ..io import atomic_open, read_json, write_json
from . import seeds as S


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    question: str
    a: dict[str, Any] = Field(..., description="Labels of the variants on the left of a − b.")
    b: dict[str, Any] = Field(..., description="Labels of the variants on the right.")
    where: dict[str, Any] = Field(default_factory=dict, description="Labels both sides must carry (e.g. "
                                  "{domain: sport}: only where the question is meaningful).")
    measures: list[str] = Field(..., min_length=1, description="gain.raw | gain.structured | forgetting | kl.DOMAIN")
    published: str = Field("", description="The published result this question tests, with its source.")
    expect: dict[str, int] = Field(default_factory=dict, description="Published sign of a − b per measure (+1/−1).")


class ScorerPair(BaseModel):
    """Two variants whose data differ only in the model that scored it (weak vs strong)."""

    model_config = ConfigDict(extra="forbid")
    a: dict[str, Any] = Field(..., description="Labels of the variants scored by one model (e.g. the weak one).")
    b: dict[str, Any] = Field(..., description="Labels of the variants scored by the other.")
    top: float = Field(0.3, gt=0, lt=1, description="Share of records compared as the selected top.")
    published: str = ""


class FindingsSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: str = "Findings"
    intro: str = ""
    alpha: float = Field(S.ALPHA, gt=0, lt=1, description="Family-wise error rate of the whole document (Holm).")
    margins: dict[str, float] = Field(
        default_factory=dict, description="Equivalence margin per measure kind (gain, forgetting, kl) or measure "
        "(kl.medical), in the unit the document shows (nats/token, points): |a − b| below it counts as "
        "'no difference that matters'; declared before running. A measure without one gets no equivalence test.")
    questions: list[Question] = Field(default_factory=list)
    scorers: list[ScorerPair] = Field(default_factory=list, description="Weak-to-strong scoring: rank agreement "
                                      "of IFD and perplexity between two scorers on the same records.")

    def margin(self, measure: str) -> float | None:
        """The margin of a measure in its stored unit (fractions for accuracy), None without one."""
        m = self.margins.get(measure, self.margins.get(measure.partition(".")[0]))
        return None if m is None else m / S.describe(measure)[2]


def _matches(labels: dict, want: dict) -> bool:
    return all(str(labels.get(k)) == str(v) for k, v in want.items())


def pairs_for(q: Question, vs: list[dict]) -> list[tuple[dict, dict]]:
    """(variant a, variant b) pairs: a matches q.a, b matches q.b, both q.where, every other label equal."""
    out = []
    for va in vs:
        if not (_matches(va["labels"], q.a) and _matches(va["labels"], q.where)):
            continue
        rest = {k: v for k, v in va["labels"].items() if k not in q.a}
        for vb in vs:
            if vb is not va and _matches(vb["labels"], q.b) and \
                    {k: v for k, v in vb["labels"].items() if k not in q.b} == rest:
                out.append((va, vb))
    return out


def planned_measures(config: dict) -> set[str]:
    """The measures a run of this resolved config will carry (decided from the spec, not results)."""
    from .evaluation import eval_domains
    from .spec import Run, RunConfig

    rc = RunConfig.model_validate(config)
    out = {"gain.raw"}
    if rc.data.heldout_qa is not None:
        out.add("gain.structured")
    if rc.eval.get("tasks", None) != []:
        out.add("forgetting")
    out |= {f"kl.{d}" for d in eval_domains(Run("planned", {}, rc))}
    return out


def family(spec: dict, fs: FindingsSpec) -> list[dict]:
    """The document's declared comparisons, from the spec alone (its matrix, questions, measures and
    margins), before any run: [{qid, a, b, measure, margin}], one per question, pair and measure
    both sides will carry. Holm's correction runs over these and their equivalence tests, whatever
    has finished; a comparison not measured yet counts as p = 1."""
    from .spec import expand, parse_spec

    vs: dict[str, dict] = {}
    for run in expand(parse_spec(spec)):
        labels = {k: v for k, v in run.labels.items() if k != "seed"}
        v = vs.setdefault(S._label(labels), {"label": S._label(labels), "labels": labels, "measures": None})
        have = planned_measures(run.config.model_dump(mode="json"))
        v["measures"] = have if v["measures"] is None else v["measures"] & have
    out, seen = [], set()
    for q in fs.questions:
        for va, vb in pairs_for(q, list(vs.values())):
            for m in q.measures:
                key = (q.id, va["label"], vb["label"], m)
                if m in va["measures"] and m in vb["measures"] and key not in seen:
                    seen.add(key)
                    out.append({"qid": q.id, "a": va["label"], "b": vb["label"], "measure": m,
                                "margin": fs.margin(m)})
    return out


def compute(runs: list[dict], fs: FindingsSpec, spec: dict, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """Every declared comparison measured so far, judged at the level of seeds with one Holm family
    over the declared difference and equivalence tests; returns (per question {question, rows},
    the declared family)."""
    fam = family(spec, fs)
    vs = S.variants(runs)
    by = {v["label"]: v for v in vs}
    todo = list(dict.fromkeys((f["a"], f["b"]) for f in fam if f["a"] in by and f["b"] in by))
    got = {(c["a"], c["b"], c["measure"]): c for c in S.compare(runs, pairs=todo, seed=seed, correction=None)}
    same = {(a, b) for a, b in todo if same_training(by[a], by[b])}
    rows, tests = [], []  # tests: (row or None, kind, p) over the whole declared family
    for f in fam:
        c = got.get((f["a"], f["b"], f["measure"]))
        c = dict(c, qid=f["qid"], margin=f["margin"]) if c else None
        if c:
            c["p_eq"] = tost(c, f["margin"]) if f["margin"] else NAN
            rows.append(c)
        tests.append((c, "p", c["p"] if c else NAN))
        if f["margin"]:
            tests.append((c, "p_eq", c["p_eq"] if c else NAN))
    adj = holm([p if np.isfinite(p) else 1.0 for _, _, p in tests])
    for (c, kind, _), p in zip(tests, adj):
        if c is not None:
            c[f"{kind}_adj"] = p
    m_tests = len(tests)
    out = []
    for q in fs.questions:
        mine = [c for c in rows if c["qid"] == q.id]
        for c in mine:
            c.setdefault("p_eq_adj", NAN)
            c["correction"], c["family"] = "holm", m_tests
            c["finding"] = bool(c["p_adj"] <= fs.alpha)
            c["equivalent"] = bool(np.isfinite(c["p_eq_adj"]) and c["p_eq_adj"] <= fs.alpha)
            c["mde"] = mde(c["sd"], c["n_seeds"], fs.alpha / m_tests) if m_tests else NAN
            c["verdict"] = SAME if (c["a"], c["b"]) in same else verdict(c, q.expect.get(c["measure"]))
        mark_repeats(mine, prefer=set(q.expect))
        out.append({"question": q, "rows": mine})
    return out, fam


SAME = "not a comparison: identical training data and settings"
REPEAT = "repeats another row's numbers: the same models on the same items"


def counted(c: dict) -> bool:
    """Whether a row is one of the document's comparisons (in its counts and its Holm family)."""
    return c.get("verdict") not in (SAME, REPEAT)


def mark_repeats(rows: list[dict], prefer: set[str] = frozenset()) -> None:
    """A row whose per-seed differences equal an earlier row's of the same question (e.g. a source
    that is already Q&A makes its held-out text and held-out Q&A the same items, and two variants
    trained alike give the same dose comparison twice) is that measurement again: it is shown,
    marked, and neither counted nor corrected for. The row kept is the first one whose measure is
    in `prefer` (those with a published direction to check), else the first one."""
    seen = set()
    for c in sorted(rows, key=lambda c: c["measure"] not in prefer):  # stable: order kept within each
        if not counted(c) or not all(np.isfinite(c["per_seed"])):
            continue
        key = (c["n_items"], tuple(float(x) for x in c["per_seed"]))
        if key in seen:
            c["verdict"] = REPEAT
        seen.add(key)


def _train_digest(run: dict) -> str | None:
    """sha256 of the records a run trained on (None when its data folder is not at hand)."""
    import hashlib

    p = ((run.get("metrics") or {}).get("data") or {}).get("train")
    f = Path(p) / "records.jsonl" if p else None
    return hashlib.sha256(f.read_bytes()).hexdigest() if f is not None and f.exists() else None


# data steps that act on the training records alone (study/data.prepare): their effect is in the
# records' digest, so two runs may differ in them and still train the same model
RECORD_STEPS = frozenset({"corrupt", "clean", "structure", "distill", "select", "scorer"})


def _setup(config: dict) -> dict:
    """Everything in a run's config that could make two runs on the same records differ."""
    out = {k: v for k, v in config.items() if k not in ("id", "labels")}
    out["data"] = {k: v for k, v in (config.get("data") or {}).items() if k not in RECORD_STEPS}
    return out


def same_training(va: dict, vb: dict) -> bool:
    """Both variants ran the same configuration (but for the steps that only build the training
    records) on byte-identical training records in every shared seed (e.g. a source that is
    already Q&A gives its "raw" and "Q&A" variants the same data): their models are the same,
    so their difference is no comparison. Anything else that differs (how the records are
    rendered for training, the evaluation) makes it a comparison."""
    shared = set(va["seeds"]) & set(vb["seeds"])
    for s in shared:
        if _setup(va["seeds"][s]["config"]) != _setup(vb["seeds"][s]["config"]):
            return False
        da = _train_digest(va["seeds"][s])
        if da is None or da != _train_digest(vb["seeds"][s]):
            return False
    return bool(shared)


def _scores(run: dict) -> dict[str, dict]:
    """{record id: score dict} of the scored folder a run's data came from."""
    from ..data.records import read_records

    f = Path(run["dir"]) / "data.json"
    scored = read_json(f).get("scored") if f.exists() else None
    if not scored or not (Path(scored) / "records.jsonl").exists():
        return {}
    return {r.id: (r.meta or {}).get("score") or {} for r in read_records(scored)}


def scorer_agreement(runs: list[dict], fs: FindingsSpec) -> list[dict]:
    """Per scorer pair and shared seed: `score.agreement` on the records both scored (Spearman
    rho of IFD and perplexity, overlap of the top shares by IFD beside a random ranking's)."""
    from ..score import agreement

    vs = S.variants(runs)
    out = []
    for sp in fs.scorers:
        q = Question(id="scorers", question="", a=sp.a, b=sp.b, measures=["gain.raw"])
        for va, vb in pairs_for(q, vs):
            for seed in sorted(set(va["seeds"]) & set(vb["seeds"])):
                x, y = _scores(va["seeds"][seed]), _scores(vb["seeds"][seed])
                ids = sorted(set(x) & set(y))
                if len(ids) < 4:
                    continue
                g = agreement([x[i] for i in ids], [y[i] for i in ids], fracs=(sp.top,))
                top = g["top_overlap"][0]
                out.append({"a": va["label"], "b": vb["label"], "seed": seed, "records": g["n_ifd"], "top": sp.top,
                            "scorer_a": _scorer(va["seeds"][seed]), "scorer_b": _scorer(vb["seeds"][seed]),
                            "rho_ifd": g["spearman_ifd"]["rho"], "rho_ppl": g["spearman_ppl"]["rho"],
                            "top_overlap": top["overlap"], "random_overlap": top["random_expectation"],
                            "published": sp.published})
    return out


def _scorer(run: dict) -> str:
    """The model that scored a run's data (its `data.scorer`, else the study's model)."""
    cfg = run.get("config") or {}
    return str((cfg.get("data") or {}).get("scorer") or cfg.get("model") or "?")


def verdict(c: dict, expect: int | None) -> str:
    """A row's verdict from its Holm-adjusted seed-level tests: a difference (confirming or
    contradicting the published direction), equivalence within the declared margin, or neither."""
    if c["n_seeds"] < 2:
        return ONE_SEED
    if not np.isfinite(c["p"]):
        return NO_SPREAD
    if c["finding"]:
        if not expect:
            return "finding"
        return "confirms" if np.sign(c["mean"]) == np.sign(expect) else "contradicts"
    if c.get("equivalent"):
        return "equivalent"
    if np.isfinite(c["lo"]) and (c["lo"] > 0 or c["hi"] < 0):
        return INCONCLUSIVE_SIDED
    return NO_DIFFERENCE


NO_DIFFERENCE = "no measurable difference"
ONE_SEED = "one seed so far: no seed-level test"
NO_SPREAD = "every seed gave the same difference: no spread to test against (not testable)"
INCONCLUSIVE_SIDED = "not significant after Holm (unadjusted interval excludes 0)"


def _p(x) -> str:
    """A p-value to two significant digits ("n/a" when there is none)."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.2g}"


def _f(x) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.3f}"


def strongest(done: list[dict], n: int = 3) -> list[tuple[dict, dict]]:
    """The n findings with the largest |mean| relative to their interval's half-width, one per
    question (the strongest of each), so that they answer n different questions."""
    rows = [(d["question"], c) for d in done for c in d["rows"] if c["finding"]]
    rows.sort(key=lambda qc: -abs(qc[1]["mean"]) / max((qc[1]["hi"] - qc[1]["lo"]) / 2, 1e-12))
    seen: set[str] = set()
    out = []
    for q, c in rows:
        if q.id not in seen:
            seen.add(q.id)
            out.append((q, c))
    return out[:n]


def row_cells(c: dict) -> list[str]:
    """One comparison's table cells; every number to two significant digits of its interval's
    half-width (no finer than the seeds resolve)."""
    name, unit, k = S.describe(c["measure"])
    d = S.result_decimals(c, k)
    margin = c.get("margin")
    eq = (f"{_p(c.get('p_eq_adj'))} (±{margin * k:g})" if margin else "no margin declared")
    return [c["a"], c["b"], f"{name} ({unit})", S.fmt(c["mean"], k, d),
            f"[{S.fmt(c['lo'], k, d)}, {S.fmt(c['hi'], k, d)}]",
            f"[{S.fmt(c['items']['lo'], k, d)}, {S.fmt(c['items']['hi'], k, d)}]",
            str(c["n_seeds"]), _p(c["p"]), _p(c["p_adj"]), eq,
            S.fmt(c.get("mde", NAN), k, d, sign=False), c["verdict"]]


HEAD = ["a", "b", "measure", "a − b", "95 % CI over seeds (t, unadjusted)",
        "items only (given these trained models)", "seeds", "p (t)", "Holm p", "equivalence: Holm p (margin)",
        "smallest detectable", "verdict"]


def render(done: list[dict], fs: FindingsSpec, *, weights: str, study: str, n_runs: int, n_done: int,
           seeds: list[int], machine: str, fam: list[dict], agreement: list[dict] | None = None,
           scorers: list[str] | None = None) -> str:
    lines = [f"# {fs.title}", "", "_Written by `loralab study … --findings` from the run folders in "
             f"`findings/` (study `{study}`); every number below is recomputed from them._", ""]
    if fs.intro:
        lines += [fs.intro.strip(), ""]
    if n_done < n_runs:
        lines += [f"**A partial run of the study: {n_done} of its {n_runs} runs have finished.** Questions whose "
                  "variants have not run say so; every number below comes from the finished runs only, "
                  "the comparisons not measured yet count in the correction as p = 1, and the study resumes where "
                  "it stopped (`loralab study SPEC --findings FILE` again).", ""]
    lines += [f"- Weights and data: {weights}"]
    if scorers and len(scorers) > 1:
        from ..evaluate.run import weights_of

        named = [(m, weights_of(m)) for m in scorers]
        lines += ["- Training data scored (IFD, perplexity) by: " + "; ".join(
            f"`{m}` ({w})" if w != m else f"`{m}`" for m, w in named)]
    n_tests = sum(1 + bool(f["margin"]) for f in fam)
    measured = sum(len(d["rows"]) for d in done)
    margins = ", ".join(f"{k} ±{v:g}" for k, v in fs.margins.items()) or "none"
    lines += [f"- Runs: {n_done} done of {n_runs}; seeds {', '.join(map(str, seeds))}",
              f"- Machine: {machine}", f"- Written: {datetime.date.today().isoformat()}",
              "- Statistics: the unit of inference is the training run (seed). a − b is paired within each seed "
              "on the same held-out items (matched by item id) and averaged over seeds; its 95 % interval and "
              "p-value are Student t over the per-seed differences (df = seeds − 1), unadjusted. The spec "
              f"declares {len(fam)} comparisons (questions × variant pairs × measures, {measured} measured so far) "
              f"and equivalence margins ({margins}); Holm's correction runs over those {len(fam)} difference "
              f"tests and their {n_tests - len(fam)} equivalence tests (TOST: two one-sided t tests against "
              f"±margin), {n_tests} tests in all, family-wise error {fs.alpha:g}. A row is a *finding* only when its "
              "Holm-adjusted seed-level p ≤ "
              f"{fs.alpha:g}; *equivalent* when its adjusted TOST p ≤ {fs.alpha:g}; otherwise neither was shown, "
              "and 'smallest detectable' is the true difference this design would detect with 80 % power at the "
              f"strictest level of the family ({fs.alpha:g}/{n_tests}, noncentral t with the observed seed spread). "
              "The items-only interval resamples the held-out items with the trained models held fixed "
              f"({RESAMPLES:,} resamples): it says how much other test items would move the number for these "
              "models, not what another training run would give; it is not used for any verdict. Numbers are shown "
              "to two significant digits of their interval's half-width.", ""]
    top = strongest(done)
    if top:
        lines += ["## Strongest results", ""]
        for q, c in top:
            lines.append(f"- {q.question} {S.sentence(c)}")
        lines.append("")
    for d in done:
        q = d["question"]
        lines += [f"## {q.question}", ""]
        declared = [f for f in fam if f["qid"] == q.id]
        if not d["rows"]:
            lines += [f"No finished runs for this comparison yet ({len(declared)} declared).", ""]
            continue
        lines += ["| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
        lines += ["| " + " | ".join(row_cells(c)) + " |" for c in d["rows"]]
        real = [c for c in d["rows"] if counted(c)]
        n_f = sum(c["finding"] for c in real)
        conf = sum(c["verdict"] == "confirms" for c in real)
        contra = sum(c["verdict"] == "contradicts" for c in real)
        n_eq = sum(c["verdict"] == "equivalent" for c in real)
        n_same = sum(c["verdict"] == SAME for c in d["rows"])
        n_rep = sum(c["verdict"] == REPEAT for c in d["rows"])
        lines += ["", f"Measured: {len(d['rows'])} of the {len(declared)} declared comparisons. {n_f} of {len(real)} "
                  f"are findings ({conf} confirm, {contra} contradict the published direction), {n_eq} equivalent "
                  f"within the margin; the rest show neither."
                  + (f" {n_same} rows compare runs with identical training data and settings" if n_same else "")
                  + (" and" if n_same and n_rep else "")
                  + (f" {n_rep} rows repeat another row's numbers" if n_rep else "")
                  + ("; they stay in the declared family but not in these counts." if n_same or n_rep else "")]
        if q.published:
            lines += ["", f"Published: {q.published}"]
        lines.append("")
    if agreement:
        lines += ["## Weak-to-strong scoring: do two scorers rank the same records alike?", "",
                  "| a (scorer) | b (scorer) | seed | records | Spearman ρ IFD | Spearman ρ perplexity | "
                  "top overlap by IFD | random ranking's overlap |", "|---|---|---|---|---|---|---|---|"]
        for g in agreement:
            lines.append(f"| {g['a']} ({g['scorer_a']}) | {g['b']} ({g['scorer_b']}) | {g['seed']} | {g['records']} | {_f(g['rho_ifd'])} | "
                         f"{_f(g['rho_ppl'])} | {_f(g['top_overlap'])} | {_f(g['random_overlap'])} |")
        pubs = sorted({g["published"] for g in agreement if g["published"]})
        lines += [""] + [f"Published: {p}" for p in pubs] + [""]
    return "\n".join(lines) + "\n"


def write(root: str | Path, spec: dict, md_path: str | Path, files_dir: str | Path | None = None) -> Path:
    """Compute and write FINDINGS.md; copy the small files it came from (results.csv,
    report.html, findings.json, study.json) into `files_dir` (default: `findings/` beside it)."""
    from ..device import profile
    from .report import build, load_runs, weights_line

    root = Path(root)
    fs = FindingsSpec.model_validate(spec.get("findings") or {})
    build(root, spec)  # results.csv, findings.json and report.html from the same run folders
    runs = load_runs(root)
    done, fam = compute(runs, fs, spec)
    prof = profile("cpu")
    machine = f"{prof.key['name']} ({prof.key['threads']} threads); measured matmul GFLOP/s " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(prof.gflops.items(), key=lambda kv: -kv[1]))
    agreement = scorer_agreement(runs, fs)
    planned = len(read_json(root / "study.json").get("runs") or []) if (root / "study.json").exists() else len(runs)
    md = render(done, fs, weights=weights_line(runs, spec).removeprefix("Weights: "), study=spec.get("name", root.name),
                n_runs=max(planned, len(runs)), fam=fam,
                n_done=sum(bool(r["metrics"]) for r in runs), seeds=spec.get("seeds") or [0], machine=machine,
                agreement=agreement, scorers=sorted({_scorer(r) for r in runs if r["metrics"]}))
    md_path = Path(md_path)
    with atomic_open(md_path) as f:
        f.write(md)
    files = Path(files_dir) if files_dir else md_path.parent / "findings"
    files.mkdir(parents=True, exist_ok=True)
    for name in ("results.csv", "report.html", "findings.json", "study.json"):
        if (root / name).exists():
            shutil.copyfile(root / name, files / name)
    write_json(files / "findings-computed.json", {"family": fam, "alpha": fs.alpha, "margins": fs.margins,
                                                  "questions": [{"question": d["question"].model_dump(),
                                                                 "rows": d["rows"]} for d in done],
                                                  "scorers": agreement})
    return md_path


def check_block(block: dict, groups: dict, axes: dict) -> list[str]:
    """Problems of a spec's `findings` block: its shape, and labels no run carries."""
    from pydantic import ValidationError

    try:
        fs = FindingsSpec.model_validate(block)
    except ValidationError as e:
        return [f"findings.{'.'.join(map(str, x['loc']))}: {x['msg']}" for x in e.errors()]
    out = [f"findings.margins: {k!r} is not a measure kind or measure (gain, forgetting, kl, kl.DOMAIN)"
           for k in fs.margins if k.partition(".")[0] not in S.MEASURES]
    out += [f"findings.margins: {k} = {v} must be > 0" for k, v in fs.margins.items() if not v > 0]
    for q in list(fs.questions) + [Question(id=f"scorers[{i}]", question="", a=p.a, b=p.b, measures=["gain.raw"])
                                   for i, p in enumerate(fs.scorers)]:
        for side in ("a", "b", "where"):
            for k, v in getattr(q, side).items():
                vals = [str(x) for x in axes.get(k, [])]
                if k not in axes:
                    out.append(f"findings question {q.id}: {side} names label {k!r}, not an axis ({', '.join(axes)})")
                elif str(v) not in vals:
                    out.append(f"findings question {q.id}: {side}.{k} = {v!r} is not one of {', '.join(vals)}")
        for m in q.measures:
            if m.partition(".")[0] not in S.MEASURES:
                out.append(f"findings question {q.id}: measure {m!r} (gain.raw, gain.structured, forgetting, kl.DOMAIN)")
    return out
