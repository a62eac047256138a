"""Writing a recipe's output: records + quarantine + data card, atomically, counts reconciled.

Each item a recipe reads is one ledger entry under its source (`recipe:<source>`):
kept (one record) or quarantined with a reason. The card is the usual data card
(`data/card.py`) with a `recipe` block (what the recipe made, by kind and origin) and
the adapter `role` these records are meant to train.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ...io import atomic_dir, atomic_open, write_json
from ..card import build_card
from ..ledger import Ledger
from ..records import CARD_FILE, QUARANTINE_FILE, RECORDS_FILE, Record
from ..stage import Reject


def write_recipe(out_dir: str | Path, stage: str, outcomes: Iterable[tuple[dict, str, Record | Reject]], *,
                 config: dict, recipe: dict, role: str | None) -> dict:
    """outcomes: (location, snippet, kept record | Reject). Returns the data card.

    `recipe` is completed with `by_kind` / `by_origin` counts read back from the records
    written, so the card counts what is in the folder, not what was intended.
    """
    by_kind: dict[str, dict[str, int]] = {}
    with atomic_dir(out_dir) as tmp:
        with atomic_open(tmp / RECORDS_FILE) as rf, atomic_open(tmp / QUARANTINE_FILE) as qf:
            ledger = Ledger(stage, qf)
            for loc, snip, outcome in outcomes:
                ledger.read(loc["path"])
                if isinstance(outcome, Reject):
                    ledger.quarantine(loc, outcome.reason, outcome.detail, snip)
                    q = by_kind.setdefault(loc.get("kind", "none"), {})
                    q["quarantined"] = q.get("quarantined", 0) + 1
                    continue
                rf.write(json.dumps(outcome.to_json(), ensure_ascii=False) + "\n")
                ledger.keep(loc["path"], 1)
                k = by_kind.setdefault(outcome.meta.get("trace_kind") or outcome.meta.get("style") or "record", {})
                origin = outcome.meta.get("origin", "reference")
                k[origin] = k.get(origin, 0) + 1
        card = build_card(tmp, ledger.summary(), config=config, eval_frac=0.1, seed=config.get("seed", 0))
        kept = {k: sum(v for o, v in c.items() if o != "quarantined") for k, c in by_kind.items()}
        card["recipe"] = {**recipe, "by_kind": kept, "by_kind_origin": by_kind}
        card["role"] = role
        write_json(tmp / CARD_FILE, card)
    return card
