"""Trace builders: a wrong attempt, its check and correction; a restart; a shortcut; right first time.

Every builder returns the assistant text only; `verify.verify_trace` decides whether it
is kept. A wrong attempt is either the model's own (its text cut before its first
'Answer:' line, that answer kept) or a seeded synthetic one, labelled as such:
  arith / gsm8k  one computed step gets a wrong result (off by 1-3, or a slipped
                 digit); later arithmetic steps carry the wrong value on
  multiple choice a seeded wrong option, picked as if at first sight
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from fractions import Fraction

from .items import LETTERS, Item, fmt_number
from .verify import CHECK, CORRECTION, RESTART, SHORTCUT, _ANSWER_LETTER, _ANSWER_NUM, equation_errors, evaluate_expr


@dataclass(frozen=True)
class Attempt:
    body: str  # working before the committed answer
    answer: str  # the committed (first) answer
    origin: str  # "model" | "synthetic"


def cut_attempt(text: str, answer_type: str) -> Attempt | None:
    """A model reply as (working, first committed answer); None when it commits to nothing."""
    pat = _ANSWER_LETTER if answer_type == "letter" else _ANSWER_NUM
    m = pat.search(text)
    if not m:
        return None
    from .verify import canon_number

    ans = m.group(1).upper() if answer_type == "letter" else canon_number(m.group(1))
    body = text[: m.start()].rstrip()
    # drop the lead-in to the answer the cut leaves dangling ("... to get the final", "The correct")
    body = re.sub(r"(?i)(?:\b(?:so|thus|therefore|hence)\b[ ,]*)?(?:\bthe\b\s*)?(?:\b(?:correct|final|right)\b\s*)?$",
                  "", body).rstrip(" ,:\n")
    body = re.sub(r"(?i)[ ,]*\b(?:to get|we get|gives|is)\s*$", "", body).rstrip(" ,:\n")
    return Attempt(body, ans, "model") if ans is not None else None


# ------------------------------------------------------------------ synthetic wrong attempts

_STEP = re.compile(r"(\d+(?:\.\d+)?)\s*([+\-*/])\s*(\d+(?:\.\d+)?)\s*=\s*(-?\d+(?:\.\d+)?)")


def _slip(v: Fraction, rng: random.Random) -> Fraction:
    if v.denominator == 1 and abs(v) >= 10 and rng.random() < 0.3:  # a slipped digit: 47 -> 57
        return v + 10 * rng.choice((-1, 1))
    return v + rng.choice((-3, -2, -1, 1, 2, 3))


def synthetic_wrong(it: Item, rng: random.Random) -> Attempt | None:
    """A seeded wrong attempt with exactly one false step (None when none can be made)."""
    if it.answer_type == "letter":
        wrong = [LETTERS[i] for i in range(len(it.choices)) if LETTERS[i] != it.gold]
        w = rng.choice(wrong)
        return Attempt(f"Option {w} ({it.choice_text(w)}) looks right at first sight.", w, "synthetic")
    if it.source == "arith":
        return _wrong_arith(it, rng)
    return _wrong_last_step(it, rng)


def _wrong_arith(it: Item, rng: random.Random) -> Attempt | None:
    from .items import arithmetic_steps

    steps, _ = arithmetic_steps(it.expr)
    k = rng.randrange(len(steps))
    # replay the reduction with step k's result replaced, so later steps use the wrong value
    lines, carried = [], {}
    for i, s in enumerate(steps):
        a, op, b, r = _STEP.fullmatch(s).groups()
        a, b = carried.get(a, a), carried.get(b, b)
        true = evaluate_expr(f"{a} {op} {b}")
        res = _slip(true, rng) if i == k else true
        if fmt_number(res) != r:
            carried[r] = fmt_number(res)
        lines.append(f"{a} {op} {b} = {fmt_number(res)}")
    final = _STEP.fullmatch(lines[-1]).group(4)
    if final == it.gold:
        return None
    return Attempt("\n".join(lines), final, "synthetic")


def _wrong_last_step(it: Item, rng: random.Random) -> Attempt | None:
    """gsm8k: the last equation that yields the gold answer gets a wrong result."""
    lines = list(it.steps)
    for i in range(len(lines) - 1, -1, -1):
        ms = [m for m in re.finditer(r"=\s*\$?\s*(-?\d[\d,]*(?:\.\d+)?)", lines[i])
              if m.group(1).replace(",", "") == it.gold]
        if ms:
            m = ms[-1]
            w = fmt_number(_slip(Fraction(it.gold), rng))
            lines[i] = lines[i][: m.start(1)] + w + lines[i][m.end(1):]
            return Attempt("\n".join(lines[: i + 1]), w, "synthetic")
    return None


# ------------------------------------------------------------------ the four kinds

def _reference(it: Item) -> str:
    return "\n".join(it.steps) + f"\nAnswer: {it.gold}"


def _check_line(it: Item, att: Attempt) -> str:
    if it.answer_type == "letter":
        return (f"{CHECK} option {att.answer} ({it.choice_text(att.answer)}) does not fit the question; "
                f"option {it.gold} ({it.choice_text(it.gold)}) does. So {att.answer} was wrong.")
    bad = equation_errors(att.body)
    if bad:
        sides = [s.strip().rstrip(".").strip() for s in bad[0].split("=")]
        true = fmt_number(evaluate_expr(sides[0]))
        wrong = next(s for s in sides[1:] if fmt_number(evaluate_expr(s)) != true)
        return f"{CHECK} {sides[0]} = {true}, not {wrong}. So {att.answer} is wrong."
    return f"{CHECK} working it through again does not give {att.answer}. So {att.answer} is wrong."


def self_correction(it: Item, att: Attempt) -> str:
    return f"{att.body}\nAnswer: {att.answer}\n{_check_line(it, att)}\n{CORRECTION}\n{_reference(it)}"


def restart(it: Item, att: Attempt) -> str:
    if it.answer_type == "letter":
        start, why = f"Option {att.answer} ({it.choice_text(att.answer)}) might fit.", "that does not hold up"
    else:
        lines = [x for x in att.body.split("\n") if x.strip()] or [att.body]
        bad = equation_errors(att.body)
        keep = next((i for i, x in enumerate(lines) if equation_errors(x)), None)
        start = "\n".join(lines[: keep + 1] if keep is not None else lines[: max(1, len(lines) // 2)])
        why = f"{bad[0].split('=')[0].strip()} is not {bad[0].split('=')[-1].strip()}" if bad and keep is not None \
            else "this is not leading anywhere"
    return f"{start}\nWait, {why}. {RESTART}\n{_reference(it)}"


def right_first(it: Item) -> str:
    return _reference(it)


def shortcut(a: int, op: str, b: int) -> str | None:
    """A shortcut chain for `a op b` (None when no rule applies); every side equals a op b."""
    if op == "*":
        x, y = (a, b) if b in (5, 9, 11, 25, 99) else (b, a)
        rules = {5: f"{x} * 10 / 2 = {x * 10} / 2", 9: f"{x} * 10 - {x} = {x * 10} - {x}",
                 11: f"{x} * 10 + {x} = {x * 10} + {x}", 25: f"{x} * 100 / 4 = {x * 100} / 4",
                 99: f"{x} * 100 - {x} = {x * 100} - {x}"}
        if y in rules and x > 1:
            return f"{x} * {y} = {rules[y]} = {x * y}"
    if op == "+" and a > 10 and b > 10 and a % 10 and b % 10 and (a % 10 + b % 10) == 10:
        return f"{a} + {b} = {a - a % 10} + {b - b % 10} + 10 = {a + b}"
    if op == "-" and b % 10 == 9 and a > b:
        return f"{a} - {b} = {a} - {b + 1} + 1 = {a - b}"
    return None


def insight(it: Item) -> str | None:
    """The reference working with a shortcut noticed at the first step one applies to."""
    if it.answer_type == "letter":
        return None
    lines = list(it.steps)
    for i, line in enumerate(lines):
        for m in _STEP.finditer(line.replace("$", "").replace(" x ", " * ")):
            a, op, b, _ = m.groups()
            if "." in a or "." in b:
                continue
            chain = shortcut(int(a), op, int(b))
            if chain:
                note = f"{SHORTCUT} I notice {a} {op} {b} is easier as {chain}."
                return "\n".join(lines[:i] + [note] + lines[i:]) + f"\nAnswer: {it.gold}"
    return None
