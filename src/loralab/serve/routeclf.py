"""The router's classifier: features of a prompt, the fitted regression, its calibration.

    from loralab.serve.routeclf import fit_classifier
    clf = fit_classifier(texts, vectors, labels, classes, calib_mask, settings)
    p = clf.probs(["What causes anaemia?"], vectors)      # (1, C) calibrated probabilities

Features of a prompt, concatenated (each block unit-norm):
  - its sentence embedding (the packaged MiniLM by default: what the prompt is about),
  - tf-idf of its word 1–2-grams and of its character 2–5-grams within words, with the
    vocabularies of the classifier's own training side (how the prompt is written: a
    domain's questions have a form — SciQ's "…is called what?" against ARC's "Which of
    these…" — that one 384-number average of its meaning does not keep).
`features="embedding"` keeps the first block only.

The classes are the adapters of one role and "none" (general prompts that must go to the
base). A class-balanced multinomial logistic regression (scikit-learn, L-BFGS) is fitted on
the training split; on the calibration split a temperature is fitted (NLL over a grid of
log T) and the threshold is the lowest top-adapter probability whose false activation on
the calibration "none" prompts is at most `max_false_activation`.

A fitted classifier is saved as one `.npz` (arrays + a JSON header, no pickle) and loads
back to the same probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

FORMAT = "loralab-router/2"
NGRAMS = {"word": ("word", (1, 2)), "char": ("char_wb", (2, 5))}


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True)


def _vectorizer(kind: str, vocabulary=None):
    from sklearn.feature_extraction.text import TfidfVectorizer

    analyzer, ngrams = NGRAMS[kind]
    return TfidfVectorizer(analyzer=analyzer, ngram_range=ngrams, sublinear_tf=True, min_df=2,
                           lowercase=True, vocabulary=vocabulary, dtype=np.float32)


@dataclass
class Features:
    """Maps (texts, embedding vectors) to the classifier's feature matrix."""

    ngrams: dict = field(default_factory=dict)  # kind -> fitted TfidfVectorizer

    @classmethod
    def fit(cls, texts: Sequence[str], kind: str) -> "Features":
        if kind == "embedding":
            return cls()
        if kind != "embedding+ngrams":
            raise ValueError(f"features must be 'embedding' or 'embedding+ngrams', not {kind!r}")
        out = {}
        for k in NGRAMS:
            v = _vectorizer(k)
            try:
                v.fit(list(texts))
            except ValueError:  # too few texts for any n-gram to occur twice: this block is left out
                continue
            out[k] = v
        return cls(out)

    def __call__(self, texts: Sequence[str], vectors: np.ndarray):
        from scipy.sparse import csr_matrix, hstack

        blocks = [csr_matrix(np.asarray(vectors, dtype=np.float32))]
        blocks += [v.transform(list(texts)).astype(np.float32) for v in self.ngrams.values()]
        return hstack(blocks).tocsr() if len(blocks) > 1 else blocks[0]

    def state(self) -> tuple[dict, dict]:
        """(JSON part, arrays part) for saving."""
        meta = {k: {t: int(i) for t, i in v.vocabulary_.items()} for k, v in self.ngrams.items()}
        arrays = {f"idf_{k}": v.idf_.astype(np.float32) for k, v in self.ngrams.items()}
        return meta, arrays

    @classmethod
    def from_state(cls, meta: dict, arrays) -> "Features":
        out = {}
        for k, vocab in meta.items():
            v = _vectorizer(k, vocabulary=vocab)
            v.idf_ = np.asarray(arrays[f"idf_{k}"], dtype=np.float64)  # the setter rebuilds the transformer
            out[k] = v
        return cls(out)


@dataclass
class Classifier:
    classes: list[str]  # adapter names, then "none"
    W: np.ndarray  # (C, D)
    b: np.ndarray  # (C,)
    temperature: float
    threshold: float
    calibration: dict
    features: Features = field(default_factory=Features)

    def logits(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        F = self.features(texts, vectors)
        return np.asarray(F @ self.W.T) + self.b

    def probs(self, texts: Sequence[str], vectors: np.ndarray) -> np.ndarray:
        return softmax(self.logits(texts, vectors) / self.temperature)  # (n, C)

    def save(self, path: str | Path) -> None:
        from ..io import atomic_open

        meta, arrays = self.features.state()
        head = {"format": FORMAT, "classes": self.classes, "temperature": self.temperature,
                "threshold": self.threshold, "calibration": self.calibration, "vocabularies": meta}
        with atomic_open(Path(path), "wb") as f:
            np.savez_compressed(f, W=self.W, b=self.b, header=np.frombuffer(json.dumps(head).encode(), np.uint8),
                                **arrays)

    @classmethod
    def load(cls, path: str | Path) -> "Classifier":
        with np.load(path, allow_pickle=False) as z:
            head = json.loads(bytes(z["header"]).decode())
            if head.get("format") != FORMAT:
                raise ValueError(f"format {head.get('format')!r}")
            feats = Features.from_state(head["vocabularies"], z)
            return cls(head["classes"], z["W"].astype(np.float32), z["b"].astype(np.float32),
                       float(head["temperature"]), float(head["threshold"]), head["calibration"], feats)


def fit_regression(F, y: np.ndarray, classes: int, C: float, weight: np.ndarray | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression: (W (classes, D), b (classes,)). Each row weighs
    `weight` (default 1) times n / (k · its class's total weight), so every present class carries the
    same total weight (scikit-learn's "balanced" on weighted counts, computed here so that it does not
    depend on the scikit-learn version)."""
    from sklearn.linear_model import LogisticRegression

    present = np.unique(y)
    w = np.ones(len(y)) if weight is None else np.asarray(weight, dtype=np.float64)
    totals = np.bincount(y, weights=w, minlength=classes)
    w = w * (w.sum() / (len(present) * totals[y]))
    m = LogisticRegression(C=C, max_iter=5000)
    m.fit(F, y, sample_weight=w)
    W = np.full((classes, F.shape[1]), 0.0, dtype=np.float32)
    b = np.full(classes, -1e4, dtype=np.float32)  # a class without training rows is never predicted
    coef, icpt = (m.coef_, m.intercept_) if len(present) > 2 else \
        (np.vstack([-m.coef_[0] / 2, m.coef_[0] / 2]), np.array([-m.intercept_[0] / 2, m.intercept_[0] / 2]))
    W[present], b[present] = coef, icpt
    return W, b


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) (grid over log T)."""
    best, best_t = np.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.05), np.log(20.0), 121)):
        p = softmax(logits / t)
        nll = -np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean()
        if nll < best:
            best, best_t = nll, float(t)
    return best_t


def pick_threshold(probs: np.ndarray, y: np.ndarray, none: int, max_fa: float, floor: float) -> tuple[float, dict]:
    """Smallest threshold on the top adapter probability whose false activation on the
    calibration "none" samples is <= max_fa (an adapter fires only when its probability is
    the argmax and >= threshold); with the calibration accuracy it gives."""
    pred = probs.argmax(axis=1)
    top = probs.max(axis=1)
    is_none = y == none
    fires = pred != none
    cands = np.unique(np.concatenate([[floor], top[fires & (top >= floor)]]))
    chosen = float(cands[-1]) + 1e-6 if len(cands) else 1.0
    for t in cands:  # ascending: the first that meets the target keeps the most recall
        fa = float((fires & (top >= t) & is_none).sum() / max(is_none.sum(), 1))
        if fa <= max_fa:
            chosen = float(t)
            break
    routed = np.where(fires & (top >= chosen), pred, none)
    stats = {"false_activation": float((routed[is_none] != none).mean()) if is_none.any() else None,
             "domain_accuracy": float((routed[~is_none] == y[~is_none]).mean()) if (~is_none).any() else None,
             "n": int(len(y))}
    return chosen, stats


def fit_crossfit(texts: Sequence[str], vectors: np.ndarray, y: np.ndarray, classes: list[str], *, features: str,
                 C: float, max_fa: float, floor: float, folds: int = 5, seed: int = 0, extra=None) -> Classifier:
    """Fit on every row; temperature and threshold from out-of-fold logits of `folds` refits (each row
    scored by a model that never saw it), so no row is set aside from the fit. For few, written
    example prompts, where a calibration split would cost a third of them. `extra` = (texts, vectors,
    y, weight): rows in every fit (each weighing `weight` before the class balance, so in a class
    with n examples and m of these rows they carry weight·m / (n + weight·m) of the class), never
    scored for calibration. A class with fewer than 2 rows leaves calibration undone
    (`calibration["note"]`)."""
    texts = list(texts)
    ex_t, ex_X, ex_y, ex_w = extra if extra is not None else ([], vectors[:0], y[:0], 1.0)
    ex_t = list(ex_t)

    def fit(idx):
        t = [texts[i] for i in idx] + ex_t
        f = Features.fit(t, features)
        w = np.r_[np.ones(len(idx)), np.full(len(ex_t), ex_w)]
        return (f, *fit_regression(f(t, np.vstack([vectors[idx], ex_X])), np.r_[y[idx], ex_y], len(classes), C, w))

    feats, W, b = fit(np.arange(len(y)))
    clf = Classifier(classes, W, b, 1.0, floor, {}, feats)
    k = min(folds, int(np.bincount(y, minlength=len(classes))[np.unique(y)].min()))
    if k < 2:  # a class with one example: no out-of-fold estimate
        clf.calibration["note"] = ("not calibrated: a class has a single example (temperature 1, threshold "
                                   f"{floor:g})")
        return clf
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros((len(y), len(classes)), dtype=np.float64)
    for tr, te in StratifiedKFold(k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y):
        f, Wf, bf = fit(tr)
        oof[te] = np.asarray(f([texts[i] for i in te], vectors[te]) @ Wf.T) + bf
    clf.temperature = fit_temperature(oof, y)
    clf.threshold, clf.calibration = pick_threshold(softmax(oof / clf.temperature), y, len(classes) - 1, max_fa, floor)
    clf.calibration["folds"] = k
    return clf


def fit_classifier(texts: Sequence[str], vectors: np.ndarray, y: np.ndarray, classes: list[str],
                   cal: np.ndarray, *, features: str, C: float, max_fa: float, floor: float) -> Classifier:
    """Fit on the rows where `cal` is False; temperature and threshold on the rows where it is True."""
    texts = list(texts)
    fit_texts = [t for t, c in zip(texts, cal) if not c]
    feats = Features.fit(fit_texts, features)
    F = feats(texts, vectors)
    W, b = fit_regression(F[~cal], y[~cal], len(classes), C)
    clf = Classifier(classes, W, b, 1.0, floor, {}, feats)
    if not cal.any():
        return clf
    logits = np.asarray(F[cal] @ W.T) + b
    clf.temperature = fit_temperature(logits, y[cal])
    clf.threshold, clf.calibration = pick_threshold(softmax(logits / clf.temperature), y[cal], len(classes) - 1,
                                                    max_fa, floor)
    return clf
