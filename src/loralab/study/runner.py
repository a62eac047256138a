"""`loralab study SPEC.yaml [--out DIR] [--dry-run]`: run every run of a study, resumably.

    loralab study studies/quickstart.yaml                 # -> runs/quickstart/report.html
    loralab study studies/atlas.yaml --dry-run            # print the expansion only

Layout of `<out>/<study name>/`:
  study.json          the spec as given and the expanded run list
  data/               prepared data folders, shared between runs (see study/data.py)
  base/<digest>/      base-model metrics, computed once per eval setting
  eval/<group>/       the evaluator's full metrics, one group per shared base pass
  runs/<run id>/      config.json (resolved), status.json, data.json, train/ (adapter, log), metrics.json
  results.csv, report.html

A run id is a digest of its resolved config: re-running skips runs whose status is
`done`, resumes interrupted training from its last checkpoint, and re-runs failed runs.
A failing run records its error and traceback in status.json; the others continue.
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..io import read_json, write_json
from .spec import Run, StudySpec, digest, expand

STATUS = "status.json"


def study_dir(spec: StudySpec, out: str | Path | None) -> Path:
    return Path(out or "runs") / spec.name


def status_of(run_dir: Path) -> dict:
    p = run_dir / STATUS
    return read_json(p) if p.exists() else {"state": "pending"}


def train_run(run: Run, run_dir: Path, data: dict[str, Path], progress: bool) -> dict:
    """Train (or resume training) the run's adapter; returns its card."""
    from ..adapters import load_card
    from ..config import TrainConfig
    from ..train import train

    tdir = run_dir / "train"
    if (tdir / "adapter" / "loralab.json").exists():
        return load_card(tdir / "adapter")
    fields = {"eval_frac": 0.1, "save_every": 10, **run.config.train,
              "model": run.config.model, "data": str(data["train"]), "out": str(tdir), "seed": run.config.seed}
    if run.config.data.fmt != "chat" and "fmt" not in run.config.train:
        fields["fmt"] = run.config.data.fmt
    if run.config.data.domain and "domain" not in run.config.train:
        fields["domain"] = run.config.data.domain
    cfg = TrainConfig(**fields)
    return train(cfg, resume=(tdir / "config.json").exists(), progress=progress)


def prepare_and_train(run: Run, root: Path, progress: bool = True) -> dict[str, Path]:
    """Phase 1 of a run: its data (shared steps reused) and its adapter (resumed if interrupted)."""
    from .data import prepare

    run_dir = root / "runs" / run.id
    write_json(run_dir / "config.json", {"id": run.id, "labels": run.labels, **run.config.model_dump(mode="json")})
    t0 = time.time()
    data = prepare(run.config.data, run.config.model, run.config.seed, root / "data", progress=progress)
    t1 = time.time()
    train_run(run, run_dir, data, progress)
    write_json(run_dir / "data.json", {k: str(v) for k, v in data.items()} | {
        "seconds": {"data": round(t1 - t0, 1), "train": round(time.time() - t1, 1)}})
    return data


def foreign_folders(spec: StudySpec, runs: list[Run], root: Path, progress: bool = True) -> dict[str, str]:
    """Held-out folder of every user's domain (not packaged) that `runs` measure contamination on.

    A user's domain is a foreign domain for the other runs: its prompts come from the held-out
    documents of the study's first run of that domain (ingest + split only, made here if that run
    has not run yet), so a run's numbers never depend on which runs went before it."""
    from ..evaluate.drift import DOMAINS
    from . import evaluation
    from .data import held_out

    out: dict[str, str] = {}
    everyone = expand(spec)
    for run in runs:
        for d in evaluation.eval_domains(run):
            if d in DOMAINS or d in out:
                continue
            src = next((r for r in everyone if r.config.data.domain == d and r.config.seed == run.config.seed),
                       None) or next((r for r in everyone if r.config.data.domain == d), None)
            if src is not None:
                out[d] = str(held_out(src.config.data, src.config.seed, root / "data", progress)[0]["heldout_raw"])
    return out


def summary_line(states: dict[str, dict], runs: list[Run] | None = None) -> str:
    """'3 done, 1 failed: <id> (<labels>): <error>' for the runs of this invocation."""
    names = {r.id: r.name for r in runs or []}
    done = [k for k, v in states.items() if v.get("state") == "done"]
    failed = [k for k, v in states.items() if v.get("state") == "failed"]
    line = f"{len(done)} done, {len(failed)} failed"
    if failed:
        line += ": " + "; ".join(f"{k} ({names.get(k, '')}): {states[k].get('error', '')[:160]}" for k in failed)
    return line


def _fail(e: BaseException) -> dict:
    return {"state": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(),
            "at": time.time()}


def run_study(spec: StudySpec, out: str | Path | None = None, *, progress: bool = True,
              only: list[str] | None = None, on_event: Callable[[str, Run, dict], None] | None = None
              ) -> dict[str, Any]:
    """Run every pending run of `spec` (data + training, then grouped evaluation); {run id: status}."""
    from . import evaluation

    event = on_event or (lambda *a: None)
    runs = [r for r in expand(spec) if not only or r.id in only]
    root = study_dir(spec, out)
    write_json(root / "study.json", {"spec": spec.model_dump(mode="json"), "spec_digest": digest(spec.model_dump()),
                                     "runs": [{"id": r.id, "labels": r.labels} for r in expand(spec)]})
    states: dict[str, dict] = {}
    trained: list[tuple[Run, Path, dict[str, Path]]] = []

    def failed(run: Run, run_dir: Path, e: BaseException) -> None:  # called in an except block: keeps the traceback
        states[run.id] = _fail(e)
        write_json(run_dir / STATUS, states[run.id])
        event("failed", run, states[run.id])

    for run in runs:  # phase 1: data + training
        run_dir = root / "runs" / run.id
        st = status_of(run_dir)
        if st["state"] == "done" and (run_dir / "metrics.json").exists():
            states[run.id] = st
            event("skip", run, st)
            continue
        event("start", run, st)
        write_json(run_dir / STATUS, {"state": "running", "started": time.time(), "resumed_from": st["state"]})
        try:
            data = prepare_and_train(run, root, progress)
        except KeyboardInterrupt:
            write_json(run_dir / STATUS, {"state": "interrupted", "at": time.time()})
            raise
        except Exception as e:  # a failing run is data: record it, go on
            failed(run, run_dir, e)
            continue
        write_json(run_dir / STATUS, {"state": "trained", "at": time.time()})
        trained.append((run, run_dir, data))
    groups: dict[str, list] = {}
    for item in trained:
        groups.setdefault(evaluation.group_key(item[0], item[2]), []).append(item)
    folders = foreign_folders(spec, [t[0] for t in trained], root, progress)
    memo: dict = {}  # the base passes, shared by groups with the same model, seed and eval settings
    for members in groups.values():  # phase 2: one evaluation per group shares the base passes
        t0 = time.time()
        try:
            res = evaluation.evaluate_group(members, root, progress, domain_folders=folders, memo=memo)
        except KeyboardInterrupt:
            raise
        except Exception as e:
            for run, run_dir, _ in members:
                failed(run, run_dir, e)
            continue
        for run, run_dir, data in members:
            card = read_json(run_dir / "train" / "adapter" / "loralab.json")
            prior = read_json(run_dir / "data.json")
            metrics = {"id": run.id, "labels": run.labels, **res[run.id],
                       "train": card.get("curve") or card.get("training") or {},
                       "seconds": {**prior.get("seconds", {}), "eval_group": round(time.time() - t0, 1)}}
            if run.config.eval.get("rag") is not None:  # LoRA + RAG for this run's adapter
                t1 = time.time()
                try:
                    metrics["rag"] = evaluation.rag_for_run(run, run_dir, data, root, progress)
                except Exception as e:  # a run without DROP questions on its held-out documents, ...
                    failed(run, run_dir, e)
                    continue
                metrics["seconds"]["rag"] = round(time.time() - t1, 1)
            write_json(run_dir / "metrics.json", metrics)
            states[run.id] = {"state": "done", "finished": time.time()}
            write_json(run_dir / STATUS, states[run.id])
            event("done", run, states[run.id])
    if spec.merge:  # merges of finished runs' adapters, evaluated beside their parents (merges.json)
        from .merging import run_merges

        run_merges(spec, root, expand(spec), progress)
    return states
