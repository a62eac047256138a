"""Checkable items for the recipes, read from the packaged benchmarks.

  arith   basic_skills_arithmetic ("16 + 8 / 4 ="): worked steps computed here with
          operator precedence, exact; items whose packaged gold disagrees are refused
  logic   basic_skills_logical_reasoning: premises, four conclusions, one follows
  gsm8k   GSM8K with its worked answers (number answer)
  arc     ARC-Easy validation, multiple choice (letter answer)
  sciq    SciQ validation, multiple choice (letter answer)

Multiple-choice options are shuffled with a per-item seed (SciQ's packaged gold is
always the last option). Every item belongs to one side of a fixed split by item id:
`part="train"` for recipes, `part="heldout"` for evaluation (`HELDOUT_FRAC` of ids);
no item is on both sides.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

from ..split import is_eval

SOURCES = ("arith", "logic", "gsm8k", "arc", "sciq")
HELDOUT_FRAC = 0.25
SPLIT_SEED = 17
LETTERS = "ABCDEFGHIJ"
COT_NUMBER = "{q}\nWork it out step by step, one step per line, then finish with 'Answer: <number>'."
COT_LETTER = "{q}\nThink it through step by step, then finish with 'Answer: <letter>'."


class UnusableItem(ValueError):
    """A packaged item that cannot be verified (e.g. its gold disagrees with its arithmetic)."""


@dataclass(frozen=True)
class Item:
    id: str
    source: str  # one of SOURCES
    question: str  # the problem as shown (options included for multiple choice)
    gold: str  # canonical number, or a letter
    answer_type: str  # "number" | "letter"
    steps: tuple[str, ...] = ()  # reference working, one step per line (no Answer line)
    choices: tuple[str, ...] = ()  # option texts in shown order (multiple choice)
    expr: str = ""  # arithmetic expression (arith)
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def prompt(self) -> str:
        return (COT_LETTER if self.answer_type == "letter" else COT_NUMBER).format(q=self.question)

    def choice_text(self, letter: str) -> str:
        return self.choices[LETTERS.index(letter)]


def fmt_number(v: Fraction) -> str:
    return str(v.numerator) if v.denominator == 1 else str(float(v))


# ------------------------------------------------------------------ arithmetic

_TOKEN = re.compile(r"\d+(?:\.\d+)?|[+\-*/]")


def arithmetic_steps(expr: str) -> tuple[list[str], Fraction]:
    """('16 + 8 / 4') -> (['8 / 4 = 2', '16 + 2 = 18'], 18): one reduction per step, * and / first."""
    toks = _TOKEN.findall(expr)
    if len(toks) < 3 or len(toks) % 2 == 0 or "".join(toks) != expr.replace(" ", ""):
        raise UnusableItem(f"not a flat arithmetic expression: {expr!r}")
    vals = [Fraction(t) for t in toks[0::2]]
    ops = toks[1::2]
    steps = []
    for group in ("*/", "+-"):
        i = 0
        while i < len(ops):
            if ops[i] not in group:
                i += 1
                continue
            a, b = vals[i], vals[i + 1]
            if ops[i] == "/" and b == 0:
                raise UnusableItem("division by zero")
            r = {"*": a * b, "/": a / b if b else None, "+": a + b, "-": a - b}[ops[i]]
            steps.append(f"{fmt_number(a)} {ops[i]} {fmt_number(b)} = {fmt_number(r)}")
            vals[i: i + 2] = [r]
            del ops[i]
    return steps, vals[0]


def _arith(limit_docs: tuple[dict, ...]) -> list[Item]:
    out = []
    for d in limit_docs:
        expr = d["question"].rstrip().rstrip("=").strip()
        gold_text = d["choices"][d["gold"]].strip()
        out.append(Item(f"arith:{d['id']}", "arith", f"What is {expr}?", gold_text, "number", expr=expr,
                        meta={"packaged_gold": gold_text}))
    return out


def resolve_arith(it: Item) -> Item:
    """The item with its computed steps; UnusableItem when the packaged gold disagrees."""
    from .verify import canon_number

    steps, val = arithmetic_steps(it.expr)
    if canon_number(fmt_number(val)) != canon_number(it.gold):
        raise UnusableItem(f"packaged gold {it.gold} but {it.expr} = {fmt_number(val)}")
    return Item(it.id, it.source, it.question, canon_number(it.gold), "number", tuple(steps), (), it.expr, it.meta)


# ------------------------------------------------------------------ multiple choice

def _shuffle(item_id: str, choices: list[str], gold: int) -> tuple[tuple[str, ...], str]:
    seed = int.from_bytes(hashlib.sha256(item_id.encode()).digest()[:4], "big")
    order = np.random.default_rng(seed).permutation(len(choices))
    shown = tuple(choices[i] for i in order)
    return shown, LETTERS[int(np.where(order == gold)[0][0])]


def mc_item(item_id: str, source: str, question: str, choices: list[str], gold: int) -> Item:
    shown, letter = _shuffle(item_id, choices, gold)
    q = question.strip() + "".join(f"\n{LETTERS[i]}. {c}" for i, c in enumerate(shown))
    ref = (f"Option {letter} ({shown[LETTERS.index(letter)]}) is the one that fits the question.",)
    return Item(item_id, source, q, letter, "letter", ref, shown)


def _logic(docs: tuple[dict, ...]) -> list[Item]:
    return [mc_item(f"logic:{d['id']}", "logic", f"{d['question'].strip()}\nWhich conclusion follows?",
                    list(d["choices"]), int(d["gold"])) for d in docs]


# ------------------------------------------------------------------ reading

def load_source(name: str) -> list[Item]:
    """Every item of one source (arith items still unresolved: see `resolve`)."""
    # the packaged benchmarks have one reader, in evaluate/ (sources, tasks, gen)
    from ...evaluate import gen
    from ...evaluate import sources as S
    from ...evaluate import tasks as T

    if name == "arith":
        return _arith(S.oe_docs("basic_skills_arithmetic", "rc_5shot"))
    if name == "logic":
        return _logic(S.oe_docs("basic_skills_logical_reasoning", "rc_5shot"))
    if name == "gsm8k":
        out = []
        for g in gen.gsm8k_items():
            lines = [x.strip() for x in g.solution.split("\n") if x.strip() and not x.startswith("Answer:")]
            out.append(Item(g.id, "gsm8k", g.question.strip(), g.answer, "number", tuple(lines)))
        return out
    if name in ("arc", "sciq"):
        task = T.get("arc_easy" if name == "arc" else "sciq")
        return [mc_item(f"{name}:{it.id}", name, it.question, list(it.choices), it.gold) for it in task.all_items()]
    raise KeyError(f"unknown item source {name!r}; known: {', '.join(SOURCES)}")


def resolve(it: Item) -> Item:
    return resolve_arith(it) if it.source == "arith" else it


def _usable(it: Item) -> Item | None:
    try:
        return resolve(it)
    except UnusableItem:
        return None


def select(sources: list[str], n: int, *, part: str = "train", seed: int = 0, verified: bool = False) -> list[Item]:
    """`n` items spread evenly over `sources` (seeded), all on one side of the split.

    verified=True: resolved items only, unusable ones passed over (for evaluation; the
    recipes take them unresolved and quarantine what they cannot use).
    """
    if part not in ("train", "heldout"):
        raise ValueError(f"part must be train or heldout, not {part!r}")
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        raise KeyError(f"unknown item source(s) {', '.join(unknown)}; known: {', '.join(SOURCES)}")
    per = [n // len(sources) + (i < n % len(sources)) for i in range(len(sources))]
    out: list[Item] = []
    for src, k in zip(sources, per):
        pool = [it for it in load_source(src) if is_eval(it.id, HELDOUT_FRAC, SPLIT_SEED) == (part == "heldout")]
        order = np.random.default_rng([seed, SOURCES.index(src)]).permutation(len(pool))
        if not verified:
            out += [pool[i] for i in order[:k]]
            continue
        got = []
        for i in order:
            if len(got) == k:
                break
            if (r := _usable(pool[i])) is not None:
                got.append(r)
        out += got
    return out
