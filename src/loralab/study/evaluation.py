"""A study's measurements: `loralab.evaluate` on the runs' adapters, in the report's schema.

Runs that share held-out data and eval settings are measured in one `evaluate` call,
so the base model's passes (benchmarks, reasoning, prompt sets) run once for all of
them; an adapter with added tokens (a trigger) gets its own call, since its vocabulary
differs, and reuses the base passes of the study's earlier calls (one memo per study).
The evaluator's full metrics.json stays in `<study>/eval/<group>/`; each run gets the
summary below in its metrics.json (schema in report.py).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ..io import iter_jsonl, read_json
from .spec import Run, digest


def _ci(d: dict | None, sign: float = 1.0) -> tuple[float, float, float] | None:
    if not d or d.get("mean") is None:
        return None
    lo, hi = sign * d["lo"], sign * d["hi"]
    return sign * d["mean"], min(lo, hi), max(lo, hi)


def _task(v: dict) -> dict:
    """One benchmark's headline accuracy (acc_norm where lm-eval reports it) base vs adapter."""
    metric = v.get("metric", "acc")
    return {"metric": metric, "base": ((v.get("base") or {}).get(metric) or {}).get("mean"),
            "adapter": ((v.get("adapter") or {}).get(metric) or {}).get("mean"),
            "delta": (v.get("delta") or {}).get("mean")}


def data_summary(data: dict[str, Path]) -> dict[str, Any]:
    """Size of the training set and the base model's view of it (mean IFD, perplexity, loss)."""
    n, ifd, ppl, loss = 0, [], [], []
    for row in iter_jsonl(Path(data["train"]) / "records.jsonl"):
        n += 1
        s = (row.get("meta") or {}).get("score") or {}
        if isinstance(s.get("ifd"), (int, float)) and math.isfinite(s["ifd"]):
            ifd.append(s["ifd"])
        p = s.get("ppl_cond", s.get("ppl"))
        if isinstance(p, (int, float)) and math.isfinite(p):
            ppl.append(p)
        lv = s.get("loss_cond", s.get("loss"))
        if isinstance(lv, (int, float)) and math.isfinite(lv):
            loss.append(lv)
    mean = lambda xs: float(sum(xs) / len(xs)) if xs else None  # noqa: E731
    return {"n_train": n, "ifd_mean": mean(ifd), "ppl_mean": mean(ppl), "loss_mean": mean(loss),
            **{k: str(v) for k, v in data.items()}}


def _task_items(it: dict | None, side: str) -> dict | None:
    return {"ids": list(it["ids"]), "values": list(it[side])} if it and it.get(side) is not None else None


def _pair(c: dict | None, sign: float = 1.0) -> list[float]:
    g = _ci(c, sign)
    return [g[1], g[2]] if g else [float("nan")] * 2


def summarize(m: dict) -> dict[str, Any]:
    """The evaluator's metrics for one adapter -> the report's schema.

    Every `X` with an `X_ci` is the point estimate of the statistic whose bootstrap gave
    that interval; `items` keeps the per-item vectors so two runs measured on the same
    items can be compared paired (report.findings).
    """
    out: dict[str, Any] = {}
    items: dict[str, Any] = {}
    forms = {"raw": m.get("in_domain"), **(m.get("in_domain_extra") or {})}
    for form, ind in forms.items():
        if not ind:
            continue
        d = ind["adapter"].get("delta_vs_base")  # adapter − base; gain = base − adapter
        ov = ind.get("overlap") or {}
        out.setdefault("in_domain", {})[form] = {
            "base_loss": ind["base"]["loss"], "adapter_loss": ind["adapter"]["loss"],
            "gain": -d["mean"], "gain_ci": _pair(d, -1.0), "p": d.get("p"),
            "records": ind["adapter"].get("records"), "tokens": ind["adapter"].get("tokens"),
            "overlap": ov.get("records"), "source": ind.get("source")}
        if ind.get("items"):
            items[f"in_domain.{form}"] = ind["items"]
    f = m.get("forgetting") or {}
    if f.get("delta"):
        d = _ci(f["delta"])
        out["forgetting"] = {"base_acc": f["base_mean"]["mean"], "adapter_acc": f["adapter_mean"]["mean"],
                             "delta": d[0], "delta_ci": [d[1], d[2]], "p": f["delta"].get("p"),
                             "tasks": ",".join(f.get("tasks") or []),
                             "excluded_own_domain": ",".join(f.get("excluded_own_domain") or []),
                             "per_task": {k: _task(v) for k, v in (m.get("tasks") or {}).items()}}
        # per task {"ids", "values"}: per-item scores with the benchmark's item ids (pairing by id)
        for key, side in (("forgetting", "adapter"), ("forgetting_base", "base")):
            items[key] = {k: _task_items(m["tasks"][k].get("items"), side) for k in f.get("tasks") or []}
    reasoning = {}
    for k, v in (m.get("reasoning") or {}).items():
        reasoning[k] = {"delta_cot": (v.get("delta_cot") or {}).get("mean"),
                        "delta_direct": (v.get("delta_direct") or {}).get("mean")}
    if reasoning:
        out["reasoning"] = reasoning
    c = m.get("contamination") or {}
    cont = {}
    for dom, v in (c.get("domains") or {}).items():
        if v.get("own"):
            continue
        leak = (v.get("style_leak") or {}).get("leak") or {}
        cont[dom] = {"kl": v.get("kl"), "kl_ci": _pair(v.get("kl_ci")), "js": v.get("js"),
                     "js_ci": _pair(v.get("js_ci")), "prompts": v.get("prompts")}
        if leak:
            cont[dom].update({"style_leak": leak.get("mean"), "style_leak_ci": _pair(leak)})
        if v.get("items"):
            items[f"contamination.{dom}"] = v["items"]
        if v.get("with_trigger"):
            t = v["with_trigger"]
            cont[f"{dom}+trigger"] = {"kl": t.get("kl"), "kl_ci": _pair(t.get("kl_ci")), "js": t.get("js"),
                                      "js_ci": _pair(t.get("js_ci")), "prompts": t.get("prompts")}
    if cont:
        out["contamination"] = cont
    w = m.get("weights") or {}
    summ = w.get("summary", w)
    if summ.get("total_norm") is not None:
        out["weights"] = {"delta_fro": summ.get("total_norm"), "rel_delta": summ.get("mean_rel_norm"),
                          "eff_rank": summ.get("mean_erank"), "intruders": summ.get("intruders")}
    out["model"] = {"spec": (m.get("model") or {}).get("spec"), "weights": (m.get("model") or {}).get("weights"),
                    "fingerprint": (m.get("model") or {}).get("fingerprint")}
    out["items"] = items
    return out


def group_key(run: Run, data: dict[str, Path]) -> str:
    trig = run.config.train.get("trigger")
    return digest({"model": run.config.model, "heldout": str(data["heldout_raw"]),
                   "heldout_qa": str(data.get("heldout_qa")), "eval": run.config.eval,
                   "seed": run.config.seed, "solo": run.id if trig else None})


def eval_domains(run: Run) -> list[str]:
    """Contamination domains of a run: the eval.foreign names other than its own domain.

    The study reports contamination on foreign prompts only (`summarize`), so its own domain's
    prompts, which in the quickstart made up most of the contamination work (NFL passages are
    long), are not generated or measured here; `loralab eval` still shows them, marked own."""
    foreign = run.config.eval.get("foreign")
    if foreign is None:
        return []
    return sorted(set(foreign) - {run.config.data.domain})


def evaluate_group(runs: list[tuple[Run, Path, dict[str, Path]]], root: Path, progress: bool = True,
                   domain_folders: dict[str, str] | None = None, memo: dict | None = None) -> dict[str, dict]:
    """Evaluate the adapters of `runs` (same group) in one call; {run id: summary}.

    `domain_folders` maps a domain that is not packaged (a user's own) to the held-out
    records its contamination prompts come from; `memo` (kept across a study's groups) lets
    a later group reuse the base passes of an earlier one with the same settings.
    """
    from ..evaluate import EvalConfig, evaluate
    from ..evaluate.drift import DOMAINS

    run0, _, data0 = runs[0]
    fields = {k: v for k, v in run0.config.eval.items() if k not in ("foreign", "rag")}
    folders = dict(domain_folders or {})
    if "foreign" in run0.config.eval:
        # a user's domain whose runs made no held-out folder (all failed) cannot be prompted
        fields["domains"] = [d for d in eval_domains(run0) if d in DOMAINS or d in folders]
        fields["domain_data"] = {d: folders[d] for d in fields["domains"] if d not in DOMAINS and d in folders}
    out = root / "eval" / group_key(run0, data0)
    if data0.get("heldout_qa"):  # every adapter of the group: the same held-out documents as Q&A
        fields["extra_eval"] = {"structured": str(data0["heldout_qa"])}
    cfg = EvalConfig(**{"seed": run0.config.seed, **fields, "model": run0.config.model,
                        "adapters": [str(d / "train" / "adapter") for _, d, _ in runs],
                        "eval_data": str(data0["heldout_raw"]), "eval_split": "all", "allow_overlap": True,
                        "out": str(out), "progress": progress})
    res = evaluate(cfg, memo)
    by_path = {str(Path(m["adapter"]["path"]).resolve()): m for m in res["adapters"].values()}
    result = {}
    for run, run_dir, data in runs:
        m = by_path[str((run_dir / "train" / "adapter").resolve())]
        result[run.id] = {**summarize(m), "data": data_summary(data), "eval_dir": str(out)}
    return result


def base_metrics(root: Path) -> dict | None:
    """The base numbers of the first evaluation group (for the report header)."""
    for p in sorted((root / "eval").glob("*/*/metrics.json")):
        return read_json(p)
    return None


def rag_for_run(run: Run, run_dir: Path, data: dict[str, Path], root: Path, progress: bool = True) -> dict:
    """A run's `eval.rag`: base / base+RAG / adapter / adapter+RAG on DROP questions about its
    held-out documents, with an index of every document it ingested (the held-out games' facts
    are in the index, never in the weights). The index is built once per ingest and settings."""
    from ..rag import build_index
    from ..ragstudy import RunRag, eval_adapter

    cfg = RunRag(**run.config.eval["rag"])
    index = root / "data" / f"index-{digest([str(data['ingest']), cfg.chunk, cfg.overlap])}"
    build_index([str(data["ingest"])], index, chunk=cfg.chunk, overlap=cfg.overlap, progress=progress)
    res = eval_adapter(run.config.model, run_dir / "train" / "adapter", index, k=cfg.k, limit=cfg.limit,
                       game_hint=cfg.game_hint, max_new_tokens=cfg.max_new_tokens, foreign=cfg.foreign,
                       prompts=cfg.prompts, seed=run.config.seed, progress=progress)
    out = {"n_questions": res["n_questions"], "k": cfg.k, "index": str(index), "finding": res["finding"]}
    for cond, sm in res["summary"].items():
        out[cond] = {m: {"mean": v["mean"], "lo": v["lo"], "hi": v["hi"]} for m, v in sm.items() if v}
    return out
