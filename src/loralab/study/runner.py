"""`loralab study SPEC.yaml [--out DIR] [--dry-run]`: run every run of a study, resumably.

    loralab study studies/quickstart.yaml                 # -> runs/quickstart/report.html
    loralab study studies/atlas.yaml --dry-run            # print the expansion only

Layout of `<out>/<study name>/`:
  study.json          the spec as given and the expanded run list
  data/               prepared data folders, shared between runs (see study/data.py)
  base/<digest>/      base-model metrics, computed once per eval setting
  runs/<run id>/      config.json (resolved), status.json, train/ (adapter, log), metrics.json
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
    if run.config.data.domain and "domain" not in run.config.train:
        fields["domain"] = run.config.data.domain
    cfg = TrainConfig(**fields)
    return train(cfg, resume=(tdir / "config.json").exists(), progress=progress)


def run_one(run: Run, root: Path, evaluate: Callable[..., dict], progress: bool = True) -> dict:
    """Data -> train -> eval for one run; metrics.json written atomically at the end."""
    from .data import prepare

    run_dir = root / "runs" / run.id
    write_json(run_dir / "config.json", {"id": run.id, "labels": run.labels, **run.config.model_dump(mode="json")})
    t0 = time.time()
    data = prepare(run.config.data, run.config.model, run.config.seed, root / "data", progress=progress)
    t1 = time.time()
    card = train_run(run, run_dir, data, progress)
    t2 = time.time()
    metrics = evaluate(run=run, run_dir=run_dir, data=data, card=card, root=root)
    metrics = {"id": run.id, "labels": run.labels, "data": {k: str(v) for k, v in data.items()},
               "train": card.get("curve") or card.get("training") or {}, **metrics,
               "seconds": {"data": round(t1 - t0, 1), "train": round(t2 - t1, 1), "eval": round(time.time() - t2, 1)}}
    write_json(run_dir / "metrics.json", metrics)
    return metrics


def run_study(spec: StudySpec, out: str | Path | None = None, *, evaluate: Callable[..., dict] | None = None,
              progress: bool = True, only: list[str] | None = None, on_event: Callable[[str, Run, dict], None] = None
              ) -> dict[str, Any]:
    """Run every pending run of `spec`; returns {run id: status}."""
    from .evaluation import evaluate_run

    evaluate = evaluate or evaluate_run
    runs = expand(spec)
    root = study_dir(spec, out)
    write_json(root / "study.json", {"spec": spec.model_dump(mode="json"), "spec_digest": digest(spec.model_dump()),
                                     "runs": [{"id": r.id, "labels": r.labels} for r in runs]})
    result = {}
    for run in runs:
        if only and run.id not in only:
            continue
        run_dir = root / "runs" / run.id
        st = status_of(run_dir)
        if st["state"] == "done" and (run_dir / "metrics.json").exists():
            result[run.id] = st
            on_event and on_event("skip", run, st)
            continue
        on_event and on_event("start", run, st)
        write_json(run_dir / STATUS, {"state": "running", "started": time.time(), "resumed_from": st["state"]})
        try:
            run_one(run, root, evaluate, progress)
            st = {"state": "done", "finished": time.time()}
        except KeyboardInterrupt:
            write_json(run_dir / STATUS, {"state": "interrupted", "at": time.time()})
            raise
        except Exception as e:  # a failing run is data: record it, go on
            st = {"state": "failed", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        write_json(run_dir / STATUS, st)
        result[run.id] = st
        on_event and on_event(st["state"], run, st)
    return result
