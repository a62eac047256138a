"""What a runs folder holds: studies (report, results, runs) and single training runs.

    runs/
      quickstart/                 a study (`loralab study`): study.json, report.html,
        runs/<id>/                results.csv, runs/<id>/{config.json, status.json,
                                  metrics.json, train/adapter/}
      sport-lora/                 a single `loralab train --out` run: config.json,
                                  train_log.jsonl, adapter/

Read-only, cheap (no weights are read): the runs page lists every adapter found with a
link that opens it in the inspector, and every study's report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ...errors import UserError

MAX_METRICS = 12


def _json(p: Path) -> Any:
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def headline(metrics: Any, limit: int = MAX_METRICS) -> dict[str, float]:
    """The first `limit` numeric leaves of a metrics tree, as dotted keys (point estimates only)."""
    out: dict[str, float] = {}

    def walk(x: Any, key: str) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, bool):
            return
        if isinstance(x, (int, float)):
            out[key] = x
        elif isinstance(x, dict):
            for k, v in x.items():
                if k in ("ci", "per_item", "items", "samples", "curve", "config", "spec"):
                    continue  # intervals and raw lists stay in metrics.json
                walk(v, f"{key}.{k}" if key else str(k))

    walk(metrics, "")
    return out


def _adapter(folder: Path) -> Path | None:
    for cand in (folder / "train" / "adapter", folder / "adapter", folder):
        if (cand / "adapter_config.json").is_file():
            return cand
    return None


def run_name(folder: Path, root: Path) -> str:
    """A readable name of a run folder: its study and its labels' values (`quick-qa`), not its hash."""
    cfg = _json(folder / "config.json") or {}
    labels = cfg.get("labels") or {}
    study = folder.parent.parent.name if folder.parent.name == "runs" and folder.parent.parent != root else None
    return "-".join(str(x) for x in [study, *labels.values()] if x not in (None, "")) or folder.name


def _run(folder: Path, root: Path) -> dict:
    cfg = _json(folder / "config.json") or {}
    status = _json(folder / "status.json") or {}
    metrics = _json(folder / "metrics.json")
    ad = _adapter(folder)
    card = _json(ad / "loralab.json") if ad else None
    return {
        "id": folder.name,
        "name": run_name(folder, root),
        "path": str(folder.relative_to(root)),
        "labels": cfg.get("labels") or {},
        "state": status.get("state") or ("done" if ad else "unknown"),
        "error": status.get("error"),
        "adapter": str(ad.relative_to(root)) if ad else None,
        "domain": (card or {}).get("domain"),
        "base": ((card or {}).get("base") or {}).get("spec"),
        "metrics": headline(metrics) if metrics else {},
    }


def scan(root: str | Path) -> dict:
    """{"studies": [...], "runs": [...]} found under `root` (one level of studies, one of runs)."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise UserError(f"runs folder {r} does not exist")
    studies, runs = [], []
    for d in sorted(p for p in r.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if (d / "study.json").is_file() or (d / "runs").is_dir():
            spec = _json(d / "study.json") or {}
            rd = d / "runs"
            members = [_run(x, r) for x in sorted(rd.iterdir()) if x.is_dir()] if rd.is_dir() else []
            studies.append({
                "name": d.name, "path": d.name,
                "description": (spec.get("spec") or spec).get("description") if isinstance(spec, dict) else None,
                "report": f"{d.name}/report.html" if (d / "report.html").is_file() else None,
                "results": f"{d.name}/results.csv" if (d / "results.csv").is_file() else None,
                "runs": members,
            })
        elif _adapter(d) is not None:
            runs.append(_run(d, r))
    return {"root": str(r), "studies": studies, "runs": runs}


def resolve_inside(root: str | Path, rel: str) -> Path:
    """`root`/`rel` when it is a file inside `root` (no `..` or links out); else a UserError."""
    r = Path(root).expanduser().resolve()
    p = (r / rel).resolve()
    try:
        p.relative_to(r)
    except ValueError:
        raise UserError(f"{rel}: outside the runs folder") from None
    if not p.exists():
        raise UserError(f"{rel}: not found in the runs folder")
    return p
