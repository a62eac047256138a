"""Epistemic styles and the math-first anchor: `loralab data recipe epistemic|anchor`.

    loralab data recipe epistemic --style assumptions --out data/epi.assumptions
    loralab data recipe epistemic --style estimate --out data/epi.estimate
    loralab data recipe anchor --out data/anchor --n 200

Both styles are written on the SAME items (same sources, n and seed pick the same
items), each into its own records folder for its own adapter (role "epistemic"):

  assumptions  'Assumptions:' (what is taken as given) -> 'Derivation:' (the reference
               working) -> Answer
  estimate     'Estimate:' (a rough figure from rounded numbers, or a first-sight option)
               -> 'Exact:' (the reference working) -> 'Check:' (the exact result against
               the estimate) -> Answer

The anchor is verified arithmetic and logic items (reference working, one answer) for
`loralab train --replay DIR [--kl-weight λ]`: replay and KL on the anchor keep reasoning
in place while a domain adapter trains. Every record is verified (final answer = gold,
every written equation true, the style's markers present); the rest is quarantined.
"""

from __future__ import annotations

import re
from fractions import Fraction
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from ..records import Record
from ..stage import Reject
from . import items as I
from .verify import NUM, answers, equation_errors, evaluate_expr
from .write import write_recipe

STYLES = {
    "assumptions": ("Assumptions:", "Derivation:"),
    "estimate": ("Estimate:", "Exact:", "Check:"),
}


class RecipeConfig(BaseModel):
    """Settings of the epistemic and anchor recipes."""

    model_config = ConfigDict(extra="forbid")
    n: int = Field(100, ge=1, description="Items, spread evenly over `sources`.")
    sources: list[str] = Field(["arith", "gsm8k", "logic", "arc", "sciq"], description="Item sources (items.py).")
    seed: int = Field(0, description="Seeds the choice of items.")


def round1(v: Fraction) -> Fraction:
    """One significant figure (numbers under 10 kept): 47 -> 50, 1234 -> 1000."""
    a = abs(v)
    if a < 10:
        return v
    mag = 10 ** (len(str(int(a))) - 1)
    r = Fraction(round(a / mag) * mag)
    return r if v >= 0 else -r


def estimate_line(it: I.Item) -> tuple[str, Fraction] | None:
    """'Estimate: 50 + 20 / 2 = 60' from the item's expression (arith) or last step (gsm8k)."""
    expr = it.expr
    if not expr:
        for line in reversed(it.steps):
            m = re.search(r"((?:\d+(?:\.\d+)?\s*[+\-*/x]\s*)+\d+(?:\.\d+)?)\s*=\s*\$?\s*" + NUM,
                          line.replace("$", "").replace(",", ""))
            if m:
                expr = m.group(1).replace("x", "*")
                break
    if not expr:
        return None
    rough = re.sub(r"\d+(?:\.\d+)?", lambda m: I.fmt_number(round1(Fraction(m.group(0)))), expr)
    try:
        est = evaluate_expr(rough)
    except (ValueError, SyntaxError, ZeroDivisionError):
        return None
    shown = I.fmt_number(est) if est.denominator == 1 else f"{float(est):.2f}"
    return f"{rough} = {shown}", Fraction(shown)


def style_trace(it: I.Item, style: str) -> str | None:
    ref = "\n".join(it.steps)
    if style == "assumptions":
        if it.answer_type == "letter":
            given = "exactly one option is right, and the question means what it says"
        else:
            nums = ", ".join(dict.fromkeys(re.findall(NUM, it.question))) or "none"
            given = f"every number in the question is exact ({nums})" + (
                "; * and / come before + and -" if it.source == "arith" else "")
        return f"Assumptions: {given}.\nDerivation:\n{ref}\nAnswer: {it.gold}"
    if it.answer_type == "letter":
        g = it.gold
        return (f"Estimate: at first sight option {g} ({it.choice_text(g)}) fits best.\nExact:\n{ref}\n"
                f"Check: option {g} holds up against the question.\nAnswer: {g}")
    est = estimate_line(it)
    if est is None:
        return None
    line, v = est
    gap = abs(Fraction(it.gold) - v)
    verdict = "close to" if gap <= max(abs(v), Fraction(10)) / 2 else "far from"
    return (f"Estimate: roughly {line}.\nExact:\n{ref}\n"
            f"Check: the exact result {it.gold} is {verdict} the estimate {I.fmt_number(v)}.\nAnswer: {it.gold}")


def verify_style(trace: str, it: I.Item, style: str) -> str | None:
    """Why a style trace is not verified (None when it is)."""
    got = answers(trace, it.answer_type)
    if got != [it.gold]:
        return f"final_wrong: answers {got}, expected [{it.gold}]"
    missing = [m for m in STYLES.get(style, ("Answer:",)) if m not in trace]
    if missing:
        return f"style_markers: missing {', '.join(missing)}"
    if it.answer_type == "number":
        bad = equation_errors(trace)
        if bad:
            return f"equation_false: {bad[0]}"
    return None


def _write(out_dir, items: list[I.Item], style: str, cfg: RecipeConfig, role: str | None, stage: str) -> dict:
    outcomes = []
    for raw in items:
        loc = {"path": f"recipe:{raw.source}", "item": raw.id, "kind": style}
        try:
            it = I.resolve(raw)
        except I.UnusableItem as e:
            outcomes.append((loc, raw.question, Reject("unverifiable_item", str(e))))
            continue
        trace = style_trace(it, style) if style in STYLES else "\n".join(it.steps) + f"\nAnswer: {it.gold}"
        why = "no_estimate: no expression to estimate from" if trace is None else verify_style(trace, it, style)
        if why:
            outcomes.append((loc, trace or it.question, Reject(why.split(":")[0], why)))
            continue
        outcomes.append((loc, trace, Record(
            kind="qa", question=it.prompt, answer=trace, domain="reasoning",
            source={"path": f"recipe:{it.source}", "doc": it.id},
            meta={"recipe": stage, "style": style, "origin": "reference", "task": it.source, "gold": it.gold,
                  "answer_type": it.answer_type})))
    recipe = {"name": stage, "style": style, "items": len(items), "sources": cfg.sources}
    return write_recipe(out_dir, f"recipe:{stage}", outcomes, config=cfg.model_dump() | {"style": style},
                        recipe=recipe, role=role)


def epistemic(out_dir: str | Path, style: str, cfg: RecipeConfig | None = None) -> dict:
    """One reasoning style on the configured items into `out_dir` (role epistemic)."""
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; known: {', '.join(STYLES)}")
    cfg = cfg or RecipeConfig()
    return _write(out_dir, I.select(cfg.sources, cfg.n, part="train", seed=cfg.seed), style, cfg, "epistemic",
                  "epistemic")


def anchor(out_dir: str | Path, cfg: RecipeConfig | None = None) -> dict:
    """Verified arithmetic / logic items with their reference working (for --replay)."""
    cfg = cfg or RecipeConfig(sources=["arith", "logic"])
    return _write(out_dir, I.select(cfg.sources, cfg.n, part="train", seed=cfg.seed), "anchor", cfg, None,
                  "anchor")
