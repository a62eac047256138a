"""Routing quality: accuracy, confusion matrix and false activation, with bootstrap intervals.

    from loralab.evaluate.routing import routing_report
    prompts = router.heldout_prompts()
    report = routing_report(router.route_many, prompts, names=[e.name for e in router.entries])

`route_many` maps a list of prompts to decisions whose `.adapters` list (name, weight)
pairs (empty = the base) and `.rule` names the rule; the expected label of each prompt is
an adapter name or "base".
The first listed adapter is the routed label (the domain role's pick comes first).

  accuracy           share of domain prompts routed to their own adapter
  false_activation   share of general prompts (expected "base") routed to any adapter
  per_label          accuracy of each expected label (recall)
  confusion          counts[expected][routed]
  rules              how many decisions each rule made
"""

from __future__ import annotations

from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .stats import RESAMPLES, bootstrap_ci, paired_diff_ci

BASE = "base"


def routing_report(route_many: Callable[[list[str]], list], prompts: Sequence[tuple[str, str]],
                   names: Sequence[str], seed: int = 0) -> dict:
    labels = list(names) + [BASE]
    conf = {a: {b: 0 for b in labels} for a in labels}
    hit_domain, fired_general, rules = [], [], Counter()
    per: dict[str, list[float]] = {}
    for (_, want), d in zip(prompts, route_many([t for t, _ in prompts])):
        got = d.adapters[0][0] if d.adapters else BASE
        rules[d.rule] += 1
        conf.setdefault(want, {b: 0 for b in labels})
        conf[want][got] = conf[want].get(got, 0) + 1
        per.setdefault(want, []).append(float(got == want))
        if want == BASE:
            fired_general.append(float(got != BASE))
        else:
            hit_domain.append(float(got == want))
    return {
        "n_domain": len(hit_domain), "n_general": len(fired_general),
        "accuracy": bootstrap_ci(hit_domain, seed=seed),
        "false_activation": bootstrap_ci(fired_general, seed=seed),
        "per_label": {k: bootstrap_ci(v, seed=seed) for k, v in per.items()},
        "confusion": {"labels": labels, "counts": conf},
        "rules": dict(rules),
        "overall_accuracy": float(np.mean([x for v in per.values() for x in v])) if per else float("nan"),
    }


# ------------------------------------------------------------------ written prompts

DOMAIN_FIELDS = ("id", "text", "domain", "style", "lang")


def read_prompts(path) -> list[dict]:
    """Rows {id, text, domain, style, lang} of a written-prompt benchmark (JSONL); domain
    "general" means no adapter should act. A malformed line is a UserError naming it."""
    from ..io import read_user_jsonl

    return read_user_jsonl(path, DOMAIN_FIELDS)


def tune_split(ids, share: float, seed: int) -> set:
    """The ids (a seeded hash draw, `share` of them) whose prompts choose the threshold; the
    figures come from the others only."""
    import hashlib

    return {i for i in ids if int(hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:8], 16) / 16**8 < share}


def tune_examples(rows: Sequence[dict], share: float, seed: int, per_domain: int | None = None) -> list[tuple[str, str]]:
    """(text, domain) of the tune split's prompts, to fit a router on as written examples (the
    figures then come from the other prompts only); at most `per_domain` per domain, a seeded draw."""
    tune = tune_split([r["id"] for r in rows], share, seed)
    picked = [r for r in rows if r["id"] in tune]
    if per_domain is not None:
        rng = np.random.default_rng(seed)
        keep = []
        for dom in sorted({r["domain"] for r in picked}):
            group = [r for r in picked if r["domain"] == dom]
            keep += [group[i] for i in sorted(rng.permutation(len(group))[:per_domain])]
        picked = keep
    return [(r["text"], r["domain"]) for r in picked]


def _routed(d, threshold: float | None):
    """(adapter or None, the decision's confidence) of a decision, the classifier's choice redone
    at `threshold` (None: as the router decided)."""
    if threshold is None or d.rule in ("trigger", "keyword") or d.closest is None:
        return (d.adapters[0][0] if d.adapters else None), d.confidence
    name, p = d.closest
    if p >= threshold and (d.none is None or p > d.none):
        return name, p
    return None, (d.none if d.none is not None else 1 - p)


def pick_written_threshold(decisions, rows, max_fa: float) -> float:
    """The lowest threshold whose false activation on these (general) prompts is at most `max_fa`."""
    general = [d for d, r in zip(decisions, rows) if r["domain"] == "general"]
    cands = sorted({0.0} | {d.closest[1] for d in general if d.closest} | {1.0 + 1e-9})
    for t in cands:
        fired = [_routed(d, t)[0] is not None for d in general]
        if not fired or np.mean(fired) <= max_fa:
            return float(t)
    return 1.0 + 1e-9


def ece(conf: Sequence[float], correct: Sequence[float], bins: int = 10) -> float:
    """Expected calibration error: Σ_b n_b/N · |accuracy_b − mean confidence_b| over equal-width bins."""
    c, y = np.asarray(conf, float), np.asarray(correct, float)
    if not c.size:
        return float("nan")
    b = np.minimum((c * bins).astype(int), bins - 1)
    return float(sum(abs(y[b == k].mean() - c[b == k].mean()) * (b == k).sum() for k in range(bins) if (b == k).any())
                 / c.size)


def written_report(route_many: Callable, rows: Sequence[dict], domain_of: dict[str, str], *,
                   tune_share: float = 0.5, max_fa: float = 0.05, seed: int = 0, choose: bool = True) -> dict:
    """Routing on written prompts: the threshold chosen on a seeded tune split (lowest with false
    activation <= max_fa there), every figure from the other prompts (and each one's route, by id, for
    paired comparisons of two routers: `paired_difference`): accuracy (a domain prompt to an
    adapter of its domain), false activation (a general prompt to any adapter), by language, style
    and domain, the confusion matrix, confident wrong-domain routes (p >= 0.9), Russian − English,
    and expected calibration error; beside the router's own threshold on the same prompts.
    `choose=False` (the router was fitted on the tune split's prompts, so its decisions there are
    in-sample): no threshold is chosen; both columns are the router's own, chosen out of fold."""
    have = set(domain_of.values())
    rows = [r for r in rows if r["domain"] == "general" or r["domain"] in have]
    tune = tune_split([r["id"] for r in rows], tune_share, seed)
    decisions = route_many([r["text"] for r in rows])
    t_rows = [(d, r) for d, r in zip(decisions, rows) if r["id"] in tune]
    threshold = pick_written_threshold([d for d, _ in t_rows], [r for _, r in t_rows], max_fa) if choose else None
    rep = [(d, r) for d, r in zip(decisions, rows) if r["id"] not in tune]

    def figures(th):
        out = {"confusion": {}, "by": {}, "routes": {}}
        hits, fired, conf, correct, wrong_sure = [], [], [], [], []
        groups: dict[str, list[float]] = {}
        for d, r in rep:
            name, c = _routed(d, th)
            got = domain_of.get(name, name) if name else "base"
            want = "base" if r["domain"] == "general" else r["domain"]
            out["routes"][r["id"]] = got
            out["confusion"].setdefault(want, {}).setdefault(got, 0)
            out["confusion"][want][got] += 1
            ok = float(got == want)
            conf.append(c)
            correct.append(ok)
            if want == "base":
                fired.append(float(got != "base"))
            else:
                hits.append(ok)
                for key in (f"lang={r['lang']}", f"style={r['style']}", f"domain={r['domain']}"):
                    groups.setdefault(key, []).append(ok)
                if got not in ("base", want) and c >= 0.9:
                    wrong_sure.append({"id": r["id"], "text": r["text"], "routed": name, "confidence": round(c, 4)})
            if want == "base":  # false activation by language and by style (source)
                for key in (f"general lang={r['lang']}", f"general style={r['style']}"):
                    groups.setdefault(key, []).append(float(got != "base"))
        out.update(accuracy=bootstrap_ci(hits, seed=seed), false_activation=bootstrap_ci(fired, seed=seed),
                   n_domain=len(hits), n_general=len(fired), ece=ece(conf, correct),
                   wrong_domain_confident=wrong_sure, by={k: bootstrap_ci(v, seed=seed) for k, v in sorted(groups.items())})
        en, ru = groups.get("lang=en", []), groups.get("lang=ru", [])
        if en and ru:  # independent prompts: each language resampled on its own
            rng = np.random.default_rng(seed)
            diffs = [np.mean(rng.choice(ru, len(ru))) - np.mean(rng.choice(en, len(en))) for _ in range(2000)]
            lo, hi = np.quantile(diffs, [0.025, 0.975])
            out["ru_minus_en"] = {"mean": float(np.mean(ru) - np.mean(en)), "lo": float(lo), "hi": float(hi)}
        return out

    return {"n_prompts": len(rows), "n_tune": len(t_rows), "n_report": len(rep), "tune_share": tune_share,
            "seed": seed, "max_false_activation": max_fa, "threshold": threshold,
            "chosen": figures(threshold), "as_built": figures(None), "threshold_chosen_on_tune": choose}


def shared_texts(examples: Sequence[tuple[str, str]], rows: Sequence[dict]) -> int:
    """How many example texts are also prompts of `rows` (case and whitespace folded)."""
    import re

    def norm(t: str) -> str:
        return re.sub(r"\s+", " ", t.casefold()).strip()

    have = {norm(r["text"]) for r in rows}
    return sum(norm(t) in have for t, _ in examples)


def paired_difference(rows: Sequence[dict], routes_a: dict[str, str], routes_b: dict[str, str],
                      seed: int = 0, resamples: int = RESAMPLES) -> dict:
    """Router B − router A on the same prompts (those both reports routed): domain accuracy and false
    activation, each a paired bootstrap interval of per-prompt differences (`paired_diff_ci`, over
    `resamples`: its p-value is at least 2 / (resamples + 1), so a family corrected over many
    comparisons needs more), each router's own rate on those prompts ("a", "b": `bootstrap_ci`) and
    the discordant counts (prompts only A or only B got right / kept at the base)."""
    a_hit, b_hit, a_fired, b_fired = [], [], [], []
    for r in rows:
        if r["id"] not in routes_a or r["id"] not in routes_b:
            continue
        ga, gb = routes_a[r["id"]], routes_b[r["id"]]
        if r["domain"] == "general":
            a_fired.append(float(ga != "base"))
            b_fired.append(float(gb != "base"))
        else:
            a_hit.append(float(ga == r["domain"]))
            b_hit.append(float(gb == r["domain"]))

    def one(a, b):
        a, b = np.asarray(a), np.asarray(b)
        return {**paired_diff_ci(b, a, seed=seed, resamples=resamples), "a": bootstrap_ci(a, seed=seed), "b": bootstrap_ci(b, seed=seed),
                "only_a": int(((a == 1) & (b == 0)).sum()), "only_b": int(((a == 0) & (b == 1)).sum())}

    return {"accuracy": one(a_hit, b_hit), "false_activation": one(a_fired, b_fired)}
