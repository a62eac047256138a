"""Split long raw documents into chunks by paragraph under a token budget.

Paragraphs (separated by blank lines) are packed greedily, joined by a blank line.
A paragraph longer than the budget is split at sentence ends, and a sentence longer
than the budget at word boundaries, so no text is dropped. Token counts use the
SmolLM2 tokenizer without special tokens; a byte-level BPE never makes more tokens
than UTF-8 bytes, so text of at most `budget` bytes is not tokenized at all.
"""

from __future__ import annotations

import bisect
import itertools
import re
from functools import lru_cache

PARA = re.compile(r"\n[ \t]*\n+")
SENT = re.compile(r"(?<=[.!?…])\s+")
WORD = re.compile(r"\S+")
SLACK = 8  # tokens a join can save at the seam (a merge across it); above that, no need to tokenize
JOIN = "\n\n"


@lru_cache(maxsize=1)
def _tokenizer():
    from ..models import default_tokenizer

    return default_tokenizer()


def count_tokens(text: str, tokenizer=None) -> int:
    tok = tokenizer or _tokenizer()
    return len(tok(text, add_special_tokens=False)["input_ids"])


class Chunker:
    def __init__(self, budget: int, tokenizer=None):
        self.budget = budget
        self._tok = tokenizer

    @property
    def tok(self):
        if self._tok is None:
            self._tok = _tokenizer()
        return self._tok

    def fits(self, text: str) -> bool:
        return len(text.encode("utf-8")) <= self.budget or count_tokens(text, self.tok) <= self.budget

    def chunks(self, text: str) -> list[str]:
        """The document as chunks of at most `budget` tokens each (a single chunk when it fits)."""
        text = text.strip()
        if self.fits(text):
            return [text]
        pieces = []
        for para in PARA.split(text):
            para = para.strip()
            if para:
                pieces.extend(self._split_long(para))
        return self._pack(pieces)

    def _split_long(self, para: str) -> list[str]:
        if self.fits(para):
            return [para]
        out = []
        for sent in SENT.split(para):
            if self.fits(sent):
                out.append(sent)
            else:  # a "sentence" longer than the budget (tables, run-on OCR): cut by words
                out.extend(self._by_words(sent))
        return self._pack(out, sep=" ")

    def _by_words(self, s: str) -> list[str]:
        """Cut at word boundaries into pieces of at most `budget` tokens, in linear time.

        One tokenization of the whole run gives each token's end offset, so a piece's end
        is found by bisection; the piece is then checked on its own (a piece's first word
        loses its leading space, which can change a token or two) and shortened if needed.
        """
        words = [m.group() for m in WORD.finditer(s)]
        word_ends = list(itertools.accumulate(len(w) + 1 for w in words))  # in " ".join(words)
        joined = " ".join(words)
        try:
            enc = self.tok(joined, add_special_tokens=False, return_offsets_mapping=True)
        except (NotImplementedError, TypeError, ValueError):  # a slow tokenizer: no offsets
            enc = None
        if enc is None or "offset_mapping" not in enc:
            return self._by_words_slow(words)
        tok_ends = [e for _, e in enc["offset_mapping"]]  # (T,) char offset where each token ends
        out, i = [], 0
        while i < len(words):
            start = word_ends[i] - len(words[i]) - 1
            t0 = bisect.bisect_right(tok_ends, start)
            t_last = t0 + self.budget - 1
            limit = tok_ends[t_last] if t_last < len(tok_ends) else len(joined)
            j = max(i + 1, bisect.bisect_right(word_ends, limit + 1, lo=i))
            while j > i + 1 and not self.fits(" ".join(words[i:j])):
                j -= 1
            out.append(" ".join(words[i:j]))
            i = j
        return out

    def _by_words_slow(self, words: list[str]) -> list[str]:
        out, cur = [], []
        for w in words:
            if cur and not self.fits(" ".join(cur + [w])):
                out.append(" ".join(cur))
                cur = []
            cur.append(w)
        if cur:
            out.append(" ".join(cur))
        return out

    def _pack(self, pieces: list[str], sep: str = JOIN) -> list[str]:
        """Greedy packing; a join whose token count is surely over budget (the parts' own
        counts already exceed it by a margin) is not tokenized again."""
        out, cur, cur_n = [], "", 0
        for p in pieces:
            p_n = count_tokens(p, self.tok)
            cand = f"{cur}{sep}{p}" if cur else p
            if cur and (cur_n + p_n > self.budget + SLACK or not self.fits(cand)):
                out.append(cur)
                cand, cur_n = p, 0
            cur, cur_n = cand, cur_n + p_n
        if cur:
            out.append(cur)
        return out
