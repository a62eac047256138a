"""FINDINGS.md from a study's run folders: each question's measured answer beside the
published result it confirms or contradicts (`loralab study SPEC --findings FINDINGS.md`).

The spec's `findings` block names the questions:

    findings:
      title: What data makes a small adapter learn without damage
      questions:
        - id: content
          question: Does Q&A made from the passages teach more than the raw passages?
          a: {variant: qa}           # compared a − b, within every other label (each domain)
          b: {variant: raw}
          measures: [gain.structured, forgetting, kl.medical]
          published: Instruction-formatted data teaches answers better than raw text (...)
          expect: {gain.structured: +1}   # the published direction of a − b, per measure

Every number is computed here from the run folders (`seeds.compare`: paired within seeds,
two-level intervals, Holm over every comparison of the document). A comparison is a finding
only when its interval excludes zero after correction; then it *confirms* or *contradicts*
the published direction, else it reads "no measurable difference". Nothing is written by hand.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from ..evaluate.seedstats import RESAMPLES
from ..io import atomic_open, read_json, write_json
from . import seeds as S


class Question(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str
    question: str
    a: dict[str, Any] = Field(..., description="Labels of the variants on the left of a − b.")
    b: dict[str, Any] = Field(..., description="Labels of the variants on the right.")
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
    questions: list[Question] = Field(default_factory=list)
    scorers: list[ScorerPair] = Field(default_factory=list, description="Weak-to-strong scoring: rank agreement "
                                      "of IFD and perplexity between two scorers on the same records.")


def _matches(labels: dict, want: dict) -> bool:
    return all(str(labels.get(k)) == str(v) for k, v in want.items())


def pairs_for(q: Question, vs: list[dict]) -> list[tuple[dict, dict]]:
    """(variant a, variant b) pairs: a matches q.a, b matches q.b, every other label equal."""
    out = []
    for va in vs:
        if not _matches(va["labels"], q.a):
            continue
        rest = {k: v for k, v in va["labels"].items() if k not in q.a}
        for vb in vs:
            if vb is not va and _matches(vb["labels"], q.b) and \
                    {k: v for k, v in vb["labels"].items() if k not in q.b} == rest:
                out.append((va, vb))
    return out


def compute(runs: list[dict], fs: FindingsSpec, seed: int = 0) -> list[dict]:
    """Every question's comparisons, one Holm family over the whole document."""
    vs = S.variants(runs)
    todo, owners = [], []
    for q in fs.questions:
        for va, vb in pairs_for(q, vs):
            todo.append((va["label"], vb["label"]))
            owners.append(q)
    cmps = S.compare(runs, pairs=list(dict.fromkeys(todo)), seed=seed, correction=None)
    by = {v["label"]: v for v in vs}
    same = {(a, b) for a, b in set(todo) if same_training(by[a], by[b])}
    out = []
    for q in fs.questions:
        mine = {(a, b) for (a, b), o in zip(todo, owners) if o is q}
        rows = [dict(c) for c in cmps if (c["a"], c["b"]) in mine and c["measure"] in q.measures]
        out.append({"question": q, "rows": rows})
    for d in out:
        for c in d["rows"]:
            if (c["a"], c["b"]) in same:
                c["verdict"] = SAME
        mark_repeats(d["rows"], prefer=set(d["question"].expect))
    # one Holm family: exactly the comparisons the document shows, less those of identical training
    # runs and the rows that repeat another one's numbers
    S.adjust([c for d in out for c in d["rows"] if counted(c)])
    for d in out:
        for c in d["rows"]:
            if counted(c):
                c["verdict"] = verdict(c, d["question"].expect.get(c["measure"]))
            else:
                c.update(p_adj=float("nan"), finding=False)
    return out


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
    if not c["finding"]:
        return "no measurable difference"
    if not expect:
        return "finding"
    return "confirms" if np.sign(c["mean"]) == np.sign(expect) else "contradicts"


def _num(x: float, k: float) -> str:
    return "n/a" if x is None or not np.isfinite(x) else f"{x * k:+.3f}"


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


def render(done: list[dict], fs: FindingsSpec, *, weights: str, study: str, n_runs: int, n_done: int,
           seeds: list[int], machine: str, agreement: list[dict] | None = None,
           scorers: list[str] | None = None) -> str:
    lines = [f"# {fs.title}", "", "_Written by `loralab study … --findings` from the run folders in "
             f"`findings/` (study `{study}`); every number below is recomputed from them._", ""]
    if fs.intro:
        lines += [fs.intro.strip(), ""]
    if n_done < n_runs:
        lines += [f"**A partial run of the study: {n_done} of its {n_runs} runs have finished.** Questions whose "
                  "variants have not run say so; every number below comes from the finished runs only, and the "
                  "study resumes where it stopped (`loralab study SPEC --findings FILE` again).", ""]
    lines += [f"- Weights and data: {weights}"]
    if scorers and len(scorers) > 1:
        from ..evaluate.run import weights_of

        named = [(m, weights_of(m)) for m in scorers]
        lines += ["- Training data scored (IFD, perplexity) by: " + "; ".join(
            f"`{m}` ({w})" if w != m else f"`{m}`" for m, w in named)]
    lines += [f"- Runs: {n_done} done of {n_runs}; seeds {', '.join(map(str, seeds))}",
              f"- Machine: {machine}", f"- Written: {datetime.date.today().isoformat()}",
              "- Statistics: a − b is paired within each seed on the same held-out items, averaged over seeds; "
              f"the interval resamples seeds and items together (two-level bootstrap, 95 %, {RESAMPLES:,} resamples: "
              f"a p-value resolves down to {1 / RESAMPLES:g}), the items-only and "
              f"seeds-only (t) intervals are beside it; p-values are Holm-adjusted over the "
              f"{sum(counted(c) for d in done for c in d['rows'])} comparisons in this file. A difference is a finding only when its "
              "interval excludes zero and adjusted p < 0.05.", ""]
    top = strongest(done)
    if top:
        lines += ["## Strongest results", ""]
        for q, c in top:
            lines.append(f"- {q.question} {S.sentence(c)} ({c['verdict']})")
        lines.append("")
    for d in done:
        q = d["question"]
        lines += [f"## {q.question}", ""]
        if not d["rows"]:
            lines += ["No finished runs for this comparison.", ""]
            continue
        lines += ["| a | b | measure | a − b | 95 % CI (seeds × items) | items only | seeds only | seeds | "
                  "Holm p | verdict |", "|---|---|---|---|---|---|---|---|---|---|"]
        for c in d["rows"]:
            name, unit, k = S.describe(c["measure"])
            lines.append(f"| {c['a']} | {c['b']} | {name} ({unit}) | {_num(c['mean'], k)} | "
                         f"[{_num(c['lo'], k)}, {_num(c['hi'], k)}] | [{_num(c['items']['lo'], k)}, "
                         f"{_num(c['items']['hi'], k)}] | [{_num(c['seeds']['lo'], k)}, {_num(c['seeds']['hi'], k)}]"
                         f" | {c['n_seeds']} | {_f(c['p_adj'])} | {c['verdict']} |")
        real = [c for c in d["rows"] if counted(c)]
        n_f = sum(c["finding"] for c in real)
        conf = sum(c["verdict"] == "confirms" for c in real)
        contra = sum(c["verdict"] == "contradicts" for c in real)
        n_same = sum(c["verdict"] == SAME for c in d["rows"])
        n_rep = sum(c["verdict"] == REPEAT for c in d["rows"])
        lines += ["", f"Measured: {n_f} of {len(real)} comparisons are findings ({conf} confirm, {contra} "
                  f"contradict the published direction); the rest show no measurable difference."
                  + (f" {n_same} rows compare runs with identical training data and settings" if n_same else "")
                  + (" and" if n_same and n_rep else "")
                  + (f" {n_rep} rows repeat another row's numbers" if n_rep else "")
                  + ("; they are left out of the count and of the correction." if n_same or n_rep else "")]
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
    done = compute(runs, fs)
    prof = profile("cpu")
    machine = f"{prof.key['name']} ({prof.key['threads']} threads); measured matmul GFLOP/s " + ", ".join(
        f"{k} {v:.0f}" for k, v in sorted(prof.gflops.items(), key=lambda kv: -kv[1]))
    agreement = scorer_agreement(runs, fs)
    planned = len(read_json(root / "study.json").get("runs") or []) if (root / "study.json").exists() else len(runs)
    md = render(done, fs, weights=weights_line(runs, spec).removeprefix("Weights: "), study=spec.get("name", root.name),
                n_runs=max(planned, len(runs)),
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
    write_json(files / "findings-computed.json", {"questions": [{"question": d["question"].model_dump(),
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
    out = []
    for q in list(fs.questions) + [Question(id=f"scorers[{i}]", question="", a=p.a, b=p.b, measures=["gain.raw"])
                                   for i, p in enumerate(fs.scorers)]:
        for side in ("a", "b"):
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
