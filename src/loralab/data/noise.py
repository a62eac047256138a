"""Text-quality measures and OCR-like noise: the pure functions behind `clean` and `corrupt`.

Detection (all dependency-free, all on plain strings):
  dehyphenate       "exam-\\nple" -> "example" (a line-break hyphen between lower-case letters)
  garbage_ratio     share of characters that are neither letters, digits, whitespace nor
                    common punctuation (U+FFFD replacement characters count as garbage)
  mixed_script_ratio share of words mixing letters of two scripts ("pаper" with a Cyrillic а),
                    a typical OCR / homoglyph artefact
  guess_language    which language's function words ("the, of, and" / "le, la, et" / ...)
                    make up the largest share of the words: en, fr, de, es, it, pt, nl, or
                    "non_latin" when most letters are not Latin, or None when no list reaches
                    `min_share` (terse text such as option lists is not judged). A language
                    filter without a model: crude, but predictable and documented.
  boilerplate lines short lines that repeat across chunks of one document (running headers,
                    footers) and lines that are only a page number

Injection (`inject`): seeded character confusions (rn->m, m->rn, l->1, O->0, e->c, ...),
dropped spaces, broken lines and hyphenation at a line break, each at `rate`.
"""

from __future__ import annotations

import random
import re
import unicodedata

HYPHEN_BREAK = re.compile(r"(?<=[a-z])-\n(?=[a-z])")
WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
PAGE_NUMBER = re.compile(r"^\s*(page\s+)?[-–—]?\s*\d{1,4}\s*[-–—]?\s*$", re.IGNORECASE)
OK_PUNCT = set(".,;:!?'\"()[]{}-–—/&%$€£#@*+=<>_`~^|\\…“”‘’«»°·•§")
STOPWORDS = frozenset("""
a about after all also an and any are as at be been but by can could did do does for from had has have he
her him his how i if in into is it its just may me more most my no not now of on one only or other our out
over she so some such than that the their them then there these they this those to up us was we were what
when where which while who will with would you your
""".split())


def dehyphenate(text: str) -> tuple[str, int]:
    """Join words broken by a hyphen at a line end; returns (text, joins made)."""
    new, n = HYPHEN_BREAK.subn("", text)
    return new, n


def garbage_ratio(text: str) -> float:
    if not text:
        return 0.0
    bad = 0
    for ch in text:
        if ch.isalnum() or ch.isspace() or ch in OK_PUNCT:
            continue
        cat = unicodedata.category(ch)
        if ch == "\ufffd" or cat.startswith("C") or cat in ("So", "Sk", "Co"):
            bad += 1
    return bad / len(text)


def _script(ch: str) -> str:
    try:
        return unicodedata.name(ch).split(" ", 1)[0]
    except ValueError:
        return "?"


NEUTRAL_LETTERS = set("µμ")  # micro signs: "μm", "μg" are units, not OCR damage


def mixed_script_ratio(text: str) -> float:
    """Share of words (3+ letters) whose letters come from more than one script (LATIN + CYRILLIC, ...)."""
    words = [w for w in WORD.findall(text) if len(w) >= 3]
    if not words:
        return 0.0
    mixed = sum(1 for w in words if len({_script(c) for c in w if c not in NEUTRAL_LETTERS}) > 1)
    return mixed / len(words)


FUNCTION_WORDS = {  # frequent words distinctive of each language (words shared with English left out)
    "en": frozenset("the of and to is was for that with on as by it his he are this from which be".split()),
    "fr": frozenset("le la les des du et est une dans que qui pour pas sur au aux ce ces sont avec".split()),
    "de": frozenset("der die das und ist nicht ein eine zu den von mit sich des auf für im dem auch".split()),
    "es": frozenset("el los las del es una por que con para se lo como más pero sus le".split()),
    "it": frozenset("il di che è la non una sono della con del gli le nel anche come più".split()),
    "pt": frozenset("os da do das dos um uma que não com para por mais como se ao".split()),
    "nl": frozenset("de het een en van dat niet op te zijn met voor ook als maar aan er".split()),
}
MIN_HITS = 3  # function words a language needs before it is recognised at all


def latin_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    return sum(_script(c) == "LATIN" for c in letters) / len(letters)


def guess_language(text: str, min_share: float = 0.1) -> str | None:
    """Best-scoring language by function-word share; None when undetermined (see module doc)."""
    if latin_share(text) < 0.5:
        return "non_latin"
    words = [w.lower() for w in WORD.findall(text) if len(w) > 1]  # "A. B. C." option letters say nothing
    if not words:
        return None
    hits = {lang: sum(w in fw for w in words) for lang, fw in FUNCTION_WORDS.items()}
    best = max(hits, key=hits.get)
    if best != "en" and hits[best] <= 2 * hits["en"]:  # a few foreign words in English text stay English
        best = "en"
    return best if hits[best] >= MIN_HITS and hits[best] / len(words) >= min_share else None


def short_lines(text: str, max_len: int = 80) -> set[str]:
    """Candidate header/footer lines of a text (stripped, non-empty, short)."""
    return {s for line in text.split("\n") if 0 < len(s := line.strip()) <= max_len}


def strip_boilerplate(text: str, repeated: set[str]) -> tuple[str, int]:
    """Drop lines that are page numbers or belong to `repeated`; returns (text, lines dropped)."""
    keep, dropped = [], 0
    for line in text.split("\n"):
        s = line.strip()
        if s and (s in repeated or PAGE_NUMBER.match(s)):
            dropped += 1
            continue
        keep.append(line)
    if not dropped:
        return text, 0
    return re.sub(r"\n{3,}", "\n\n", "\n".join(keep)).strip(), dropped


# ---------------------------------------------------------------- injection

CONFUSIONS = {"rn": "m", "m": "rn", "cl": "d", "d": "cl", "l": "1", "1": "l", "I": "l", "O": "0", "0": "O",
              "e": "c", "c": "e", "h": "b", "u": "v", "S": "5", "B": "8", "g": "q", "a": "o"}
OPS = ("confuse", "confuse", "confuse", "drop_space", "break_line", "hyphenate")


def inject(text: str, rate: float, rng: random.Random) -> tuple[str, dict]:
    """OCR-like noise: at each character, with probability `rate`, one operation.

    Returns (noisy text, counts per operation). Deterministic for a given rng state.
    """
    out, counts, i = [], {}, 0
    while i < len(text):
        ch = text[i]
        if rng.random() >= rate:
            out.append(ch)
            i += 1
            continue
        op = rng.choice(OPS)
        if op == "confuse":
            two = text[i:i + 2]
            if two in CONFUSIONS:
                out.append(CONFUSIONS[two])
                i += 2
            elif ch in CONFUSIONS:
                out.append(CONFUSIONS[ch])
                i += 1
            else:
                out.append(ch)
                i += 1
                continue
        elif op in ("drop_space", "break_line"):
            if ch != " ":
                out.append(ch)
                i += 1
                continue
            out.append("" if op == "drop_space" else "\n")
            i += 1
        else:  # hyphenate: break a lower-case word across a line ("exam-\nple")
            if not (ch.islower() and i > 0 and text[i - 1].islower() and i + 1 < len(text) and text[i + 1].islower()):
                out.append(ch)
                i += 1
                continue
            out.append("-\n" + ch)
            i += 1
        counts[op] = counts.get(op, 0) + 1
    return "".join(out), counts
