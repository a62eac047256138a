"""`loralab data structure IN --out DIR --mode template|model`: raw passages -> Q&A / instructions.

    loralab data structure data/clean --out data/qa --mode template
    loralab data structure data/clean --out data/qa --mode model --limit 20

Mode `template` (no model; every target is text of the passage itself):
  continue   instruction "Continue the passage.", input = the first sentences (about half
             the passage), output = the rest
  cloze      qa: the passage with one number or capitalised name (occurring once) blanked
             as "____" as context, the question asks for the blank, the answer is the span;
             markdown structure is skipped (heading lines, list markers, the word opening a
             list item) and so are stop words
  No summary task: a passage carries no summary of itself, and a made-up target (its
  first sentence as a "headline") would teach the wrong thing.
Mode `model`: the base model reads a chunk (one worked example shown first) and writes
  "Question: ...\\nAnswer: ...". The output is parsed and checked; rejected (quarantined
  with the generation in the detail) when malformed (`malformed_output`), empty
  (`empty_output`), overlong (`overlong`), or when the answer is not grounded in the chunk
  (`ungrounded`: fewer than `min_overlap` of its content words occur in the chunk).
  Grounded is not the same as correct: a small model may pick the wrong span; the check
  removes inventions, not mistakes.
Every output links to its passage: meta["from_id"] = the raw record's id, source kept
(same document, same split side), meta["task"] names the template or "model_qa".
Non-raw records pass through unchanged. A raw record that yields nothing is quarantined
(`no_template` in template mode).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from pydantic import Field

from ..config import StageConfig
from .noise import STOPWORDS, WORD
from .records import Record
from .stage import Reject, run_stage

SENT = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'])")
SPAN = re.compile(r"\b\d[\d,.]*\d\b|\b\d\b|\b[A-Z][a-z]+(?:\s[A-Z][a-z]+)*")
BLANK = "____"
QA_FORMAT = re.compile(r"^\s*Question:\s*(?P<q>.+?)\s*\n+\s*Answer:[ \t]*(?P<a>[^\n]*)", re.S)
EXAMPLE_PASSAGE = ("The Bears beat the Packers 24-10. Matt Forte ran for two touchdowns and Robbie Gould "
                   "kicked a 32-yard field goal.")
EXAMPLE_REPLY = "Question: Who kicked the field goal for the Bears?\nAnswer: Robbie Gould"
INSTRUCTION = ("Write one question about this passage and its short answer, taken from the passage. "
               "Use the format:\nQuestion: ...\nAnswer: ...\n\nPassage:\n")


class StructureConfig(StageConfig):
    """Settings of `structure`."""

    mode: Literal["template", "model"] = Field("template", description="template (rule-made) or model (generated).")
    tasks: list[Literal["continue", "cloze"]] = Field(["continue", "cloze"], description="Templates to apply.")
    model: str = Field("smollm2-135m", description="Model spec that writes questions in model mode.")
    limit: int | None = Field(None, ge=1, description="Structure at most this many raw records, then stop reading.")
    max_new_tokens: int = Field(64, ge=8, description="Generation budget per chunk (model mode).")
    batch_size: int = Field(4, ge=1, description="Chunks generated together (model mode).")
    seed: int = Field(0, description="Seed of template choices (which span is blanked).")
    with_context: bool = Field(False, description="Model mode: keep the chunk as the Q&A context (reading "
                               "comprehension) instead of closed-book Q&A.")
    min_overlap: float = Field(0.6, ge=0, le=1, description="Share of the answer's content words that must occur "
                               "in the chunk.")
    max_question_words: int = Field(40, ge=1, description="Longer generated questions are rejected as overlong.")
    max_answer_words: int = Field(24, ge=1, description="Longer generated answers are rejected as overlong.")
    progress: bool = Field(True, description="Show a progress bar.")


# ---------------------------------------------------------------- templates

def _link(rec: Record, task: str, **fields) -> Record:
    return Record(**fields, domain=rec.domain, source=dict(rec.source),
                  meta={"from_id": rec.id, "task": task})


def template_continue(rec: Record) -> Record | None:
    sents = SENT.split(rec.text.strip())
    if len(sents) < 2:
        return None
    ends, acc = [], 0
    for s in sents[:-1]:  # character position of each possible cut (after sentence i)
        acc += len(s) + 1
        ends.append(acc)
    cut = 1 + min(range(len(ends)), key=lambda i: abs(ends[i] - len(rec.text) / 2))  # nearest the middle
    head, tail = " ".join(sents[:cut]), " ".join(sents[cut:])
    return _link(rec, "continue", kind="instruction", instruction="Continue the passage.", input=head, output=tail)


HEADING = re.compile(r"^[ \t]{0,3}(#{1,6}[ \t]|=+[ \t]*$|-{3,}[ \t]*$)")  # ATX heading / setext underline
SETEXT = re.compile(r"[ \t]*(=+|-{3,})[ \t]*")
LIST_MARKER = re.compile(r"^[ \t]*(?:[-*+\u2022]|\d{1,3}[.)])[ \t]+")


def _line_of(text: str, pos: int) -> tuple[str, int]:
    """(the line holding position `pos`, the line's start offset)."""
    start = text.rfind("\n", 0, pos) + 1
    end = text.find("\n", pos)
    return text[start: end if end >= 0 else len(text)], start


def _is_heading(text: str, pos: int) -> bool:
    """Position `pos` lies on a markdown heading: '# ...', or a line underlined by === / ---."""
    line, start = _line_of(text, pos)
    if HEADING.match(line):
        return True
    nxt, _ = _line_of(text, start + len(line) + 1) if start + len(line) < len(text) else ("", 0)
    return bool(line.strip()) and bool(SETEXT.fullmatch(nxt))


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    def group(self, text: str) -> str:
        return text[self.start: self.end]


def spans_of(text: str) -> list[Span]:
    """Candidate blanks: numbers and runs of capitalised words; a leading capitalised stop word
    ("In May", "The Queen Mary") is cut off so the name after it remains a candidate."""
    out = []
    for m in SPAN.finditer(text):
        start, words = m.start(), m.group().split(" ")
        while len(words) > 1 and words[0].lower() in STOPWORDS:
            start += len(words[0]) + 1
            words = words[1:]
        out.append(Span(start, m.end()))
    return out


def cloze_spans(text: str) -> list[Span]:
    """The spans a cloze may blank: occurring once in the passage, a name or a number (see below)."""
    return [s for s in spans_of(text) if text.count(s.group(text)) == 1 and _is_name_or_number(text, s)]


def _is_name_or_number(text: str, m: Span) -> bool:
    """Numbers, and capitalised words that are not capitalised only for starting a sentence.

    Markdown structure is not content: nothing in a heading line, no list marker
    ("1." / "2)") and no word that opens a list item counts; stop words never do.
    """
    if _is_heading(text, m.start):
        return False
    line, start = _line_of(text, m.start)
    marker = LIST_MARKER.match(line)
    if marker and m.start - start < marker.end():  # the list number itself
        return False
    if m.group(text)[0].isdigit():
        return True
    if m.group(text).split()[0].lower() in STOPWORDS:
        return False
    if marker and m.start - start == marker.end():  # first word of a list item: capitalised by position
        return False
    before = text[: m.start].rstrip(" \t\"'“”‘’«»()[]*_`")
    starts_sentence = not before or before[-1] in ".!?:;\n…|>"
    return not starts_sentence


def template_cloze(rec: Record, rng: random.Random) -> Record | None:
    text = rec.text.strip()
    spans = cloze_spans(text)
    if not spans:
        return None
    m = rng.choice(spans)
    context = text[: m.start] + BLANK + text[m.end:]
    return _link(rec, "cloze", kind="qa", context=context, answer=m.group(text),
                 question=f"Which word or number fills the blank ({BLANK}) in the passage?")


def _templates(cfg: StructureConfig):
    def process(items: Iterable[tuple[dict, Record]]) -> Iterator:
        for loc, rec in _limited(items, cfg.limit):
            if rec.kind != "raw":
                yield loc, rec, [rec]
                continue
            rng = random.Random(f"{cfg.seed}:{rec.id}")
            made = []
            if "continue" in cfg.tasks:
                made.append(template_continue(rec))
            if "cloze" in cfg.tasks:
                made.append(template_cloze(rec, rng))
            made = [r for r in made if r is not None]
            yield loc, rec, made or Reject("no_template", f"no {' / '.join(cfg.tasks)} item fits this passage")
    return process


def _limited(items: Iterable[tuple[dict, Record]], limit: int | None) -> Iterator[tuple[dict, Record]]:
    """Stop reading after `limit` raw records (unread input is not counted as read)."""
    n = 0
    for loc, rec in items:
        yield loc, rec
        n += rec.kind == "raw"
        if limit is not None and n >= limit:
            return


# ---------------------------------------------------------------- model mode

def prompt_for(chunk: str) -> list[dict]:
    """One worked example, then the chunk: a 135M model follows a shown format far better than a described one."""
    return [{"role": "user", "content": INSTRUCTION + EXAMPLE_PASSAGE},
            {"role": "assistant", "content": EXAMPLE_REPLY},
            {"role": "user", "content": INSTRUCTION + chunk}]


def content_words(text: str) -> list[str]:
    """Lower-cased non-function words, plural "s" stripped ("yards" matches "23-yard")."""
    words = (x.lower() for x in WORD.findall(text))
    return [w[:-1] if len(w) > 3 and w.endswith("s") else w for w in words if w not in STOPWORDS]


def _numbers(text: str) -> list[str]:
    return re.findall(r"\d+", text)


def parse_generation(out: str) -> tuple[str, str] | Reject:
    """(question, answer) from "Question: ...\\nAnswer: ..."; the answer is its first line."""
    m = QA_FORMAT.match(out or "")
    if not m:
        return Reject("malformed_output", f"not 'Question: ...\\nAnswer: ...': {out[:300]!r}")
    return m.group("q").strip(), m.group("a").strip()


def check_generation(q: str, a: str, chunk: str, cfg: StructureConfig) -> Reject | None:
    if not q or not a:
        return Reject("empty_output", f"empty {'question' if not q else 'answer'}: Q={q!r} A={a!r}")
    if len(q.split()) > cfg.max_question_words or len(a.split()) > cfg.max_answer_words:
        return Reject("overlong", f"{len(q.split())} question / {len(a.split())} answer words: A={a[:200]!r}")
    words, nums = content_words(a), _numbers(a)
    have, have_nums = set(content_words(chunk)), set(_numbers(chunk))
    found = sum(w in have for w in words) + sum(n in have_nums for n in nums)
    total = len(words) + len(nums)
    if total == 0 or found / total < cfg.min_overlap:
        return Reject("ungrounded", f"{found}/{total} answer words occur in the passage: A={a[:200]!r}")
    return None


def judge(out: str, rec: Record, cfg: StructureConfig, generator: str) -> list[Record] | Reject:
    """The Q&A record a generation yields for passage `rec`, or why it is rejected."""
    parsed = parse_generation(out)
    if isinstance(parsed, Reject):
        return parsed
    q, a = parsed
    bad = check_generation(q, a, rec.text, cfg)
    if bad:
        return bad
    r = _link(rec, "model_qa", kind="qa", question=q, answer=a, context=rec.text if cfg.with_context else None)
    r.meta["generator"] = generator
    return [r]


Generator = Callable[[list[list[dict]]], list[str]]


def model_generator(cfg: StructureConfig) -> tuple[Generator, str]:
    from .. import generate, models

    loaded = models.load(cfg.model)

    def gen(convs: list[list[dict]]) -> list[str]:
        return generate.generate(loaded, convs, max_new_tokens=cfg.max_new_tokens, temperature=0.0)
    return gen, f"{loaded.spec}@{loaded.fingerprint}"


def _model(cfg: StructureConfig, gen: Generator, name: str):
    def process(items: Iterable[tuple[dict, Record]]) -> Iterator:
        it = iter(_limited(items, cfg.limit))
        while batch := list(islice(it, cfg.batch_size)):
            raws = [(loc, rec) for loc, rec in batch if rec.kind == "raw"]
            outs = iter(gen([prompt_for(rec.text) for _, rec in raws]) if raws else [])
            for loc, rec in batch:
                yield loc, rec, judge(next(outs), rec, cfg, name) if rec.kind == "raw" else [rec]
    return process


def structure(in_dir: str | Path, out_dir: str | Path, cfg: StructureConfig | None = None,
              generator: Generator | None = None) -> dict:
    """Structure the raw records of `in_dir` into `out_dir`; returns the data card.

    `generator` (model mode) maps chat conversations to replies; by default the model
    named in the config answers them greedily.
    """
    cfg = cfg or StructureConfig()
    if cfg.mode == "template":
        process = _templates(cfg)
    else:
        gen, name = (generator, "custom") if generator else model_generator(cfg)
        process = _model(cfg, gen, name)
    return run_stage("structure", in_dir, out_dir, process, config=cfg.model_dump(), progress=cfg.progress)
