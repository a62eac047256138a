"""Verifiers for checkable reasoning: answers, equations, and the shape of a trace.

A reply commits to an answer on an `Answer: X` line (a number, or a choice letter).
The *first* committed answer is the first attempt; the *last* is the final answer.
Markers give a trace its events:

  Check:                     an explicit check of the answer just given
  Correction:                the corrected working after a check
  Let me start over.         a line of reasoning abandoned before it committed
  Shortcut:                  a shortcut noticed mid-way

`equation_errors(text)` evaluates every written equation chain (`8 / 4 = 2`,
`12 * 5 = 12 * 10 / 2 = 60`) with exact rational arithmetic and lists the false ones;
a stated result may be rounded to the decimals it shows. `verify_trace` says why a
trace of a given kind is not what it claims to be (None when it is).
"""

from __future__ import annotations

import ast
import re
from fractions import Fraction

CHECK = "Check:"
CORRECTION = "Correction:"
RESTART = "Let me start over."
SHORTCUT = "Shortcut:"
KINDS = ("self_correction", "restart", "insight", "right_first")

NUM = r"-?\d[\d,]*(?:\.\d+)?"
_ANSWER_NUM = re.compile(rf"answer\s*(?:is\b\s*:?|[:=])\s*\$?\s*({NUM})", re.I)
_ANSWER_LETTER = re.compile(r"(?i:answer)\s*(?:(?i:is))?\s*[:=]?\s*\(?([A-J])\b")
# a chain of at least two arithmetic expressions joined by '='
_EXPR = r"[\d\.\(][\d\.\+\-\*/×÷\(\) \t]*"
_CHAIN = re.compile(rf"(?<![\w.])({_EXPR}(?:=[ \t]*-?{_EXPR})+)")


def canon_number(text: str) -> str | None:
    """'1,200' -> '1200', '3.50' -> '3.5', '7.0' -> '7'; None when not a number."""
    t = text.replace(",", "").rstrip(".")
    try:
        v = Fraction(t)
    except (ValueError, ZeroDivisionError):
        return None
    return str(v.numerator) if v.denominator == 1 else str(float(v))


def answers(text: str, answer_type: str) -> list[str]:
    """Every answer the text commits to on an 'Answer: X' line, in order (canonical form)."""
    if answer_type == "letter":
        return [m.upper() for m in _ANSWER_LETTER.findall(text)]
    return [a for a in (canon_number(m) for m in _ANSWER_NUM.findall(text)) if a is not None]


def first_answer(text: str, answer_type: str) -> str | None:
    a = answers(text, answer_type)
    if a:
        return a[0]
    return _fallback(text, answer_type, first=True)


def final_answer(text: str, answer_type: str) -> str | None:
    a = answers(text, answer_type)
    if a:
        return a[-1]
    return _fallback(text, answer_type, first=False)


def _fallback(text: str, answer_type: str, first: bool) -> str | None:
    """Without an 'Answer:' line: the lone choice letter, or the first/last number."""
    if answer_type == "letter":
        m = re.findall(r"(?<![A-Za-z])([A-J])(?:[.)]|\s*$)", text.strip())
        return (m[0] if first else m[-1]).upper() if m else None
    nums = re.findall(NUM, text)
    return canon_number(nums[0] if first else nums[-1]) if nums else None


# ------------------------------------------------------------------ equations

def _eval(node) -> Fraction:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
        return Fraction(str(node.value))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        return a / b  # ZeroDivisionError: the caller treats it as unreadable
    raise ValueError("not arithmetic")


def evaluate_expr(expr: str) -> Fraction:
    """Exact value of an arithmetic expression (+ - * / × ÷, parentheses, decimals)."""
    e = expr.replace("×", "*").replace("÷", "/").replace(",", "").strip()
    return _eval(ast.parse(e, mode="eval"))


def _tolerance(side: str) -> Fraction:
    """A bare number may be rounded to the decimals it shows."""
    s = side.strip()
    if re.fullmatch(NUM, s) and "." in s:
        return Fraction(1, 2 * 10 ** len(s.split(".")[1]))
    return Fraction(0)


def equation_errors(text: str) -> list[str]:
    """The false equations written in `text` (each as written)."""
    bad = []
    text = re.sub(r"(?<=\d)\s*[x×]\s*(?=\$?\d)", " * ", text.replace("$", ""))  # "$1.50 x 50"
    for m in _CHAIN.finditer(text):
        sides = [s.strip().rstrip(".").strip() for s in m.group(1).split("=")]
        try:
            vals = [evaluate_expr(s) for s in sides]
        except (ValueError, SyntaxError, ZeroDivisionError):
            continue  # not an arithmetic chain (e.g. a date or a list): nothing to check
        if len(vals) < 2 or any(not re.search(r"\d", s) for s in sides):
            continue
        ref = vals[0]
        for s, v in zip(sides[1:], vals[1:]):
            if abs(v - ref) > max(_tolerance(s), _tolerance(sides[0])):
                bad.append(m.group(1).strip())
                break
    return bad


# --------------------------------------------------------------------- traces

def segments(trace: str) -> dict[str, str]:
    """The trace cut at its first markers: before_check / check / after_check, before_restart / after_restart."""
    out = {}
    if CHECK in trace:
        a, b = trace.split(CHECK, 1)
        out["before_check"], out["after_check"] = a, b
    if RESTART in trace:
        a, b = trace.split(RESTART, 1)
        out["before_restart"], out["after_restart"] = a, b
    return out


def verify_trace(trace: str, gold: str, kind: str, answer_type: str) -> str | None:
    """Why `trace` is not a verified trace of `kind` for the answer `gold` (None when it is)."""
    if kind not in KINDS:
        return f"unknown_kind: {kind}"
    got = answers(trace, answer_type)
    numeric = answer_type == "number"
    if not got:
        return "no_answer: no 'Answer:' line"
    if got[-1] != gold:
        return f"final_wrong: final answer {got[-1]}, expected {gold}"
    seg = segments(trace)
    if kind == "right_first":
        if len(got) != 1 or CHECK in trace or RESTART in trace:
            return "not_first_time: more than one answer, a check or a restart"
        tail = trace
    elif kind == "self_correction":
        if len(got) < 2 or CHECK not in trace:
            return "no_correction: needs a first answer, a check and a final answer"
        if got[0] == gold:
            return "first_right: the first answer was already right"
        if answers(seg["before_check"], answer_type)[-1:] != [got[0]]:
            return "check_misplaced: the check does not follow the first answer"
        if not re.search(rf"(?<![\w.]){re.escape(got[0])}(?![\w])", seg["after_check"].split(CORRECTION)[0]):
            return f"check_blind: the check does not name the wrong answer {got[0]}"
        tail = seg["after_check"]
    elif kind == "restart":
        if RESTART not in trace:
            return "no_restart: no restart marker"
        if answers(seg["before_restart"], answer_type):
            return "restart_committed: the abandoned path already gave an answer"
        if len(got) != 1:
            return "restart_answers: more than one final answer"
        tail = seg["after_restart"]
    else:  # insight
        if SHORTCUT not in trace or len(got) != 1 or CHECK in trace or RESTART in trace:
            return "no_shortcut: needs one shortcut and one answer"
        tail = trace
    if numeric:
        bad = equation_errors(tail)
        if bad:
            return f"equation_false: {bad[0]}"
    return None
