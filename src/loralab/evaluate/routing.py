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

from .stats import bootstrap_ci

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
