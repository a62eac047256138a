"""Character-level plausibility of a text, shared by selection and distillation."""

from __future__ import annotations


def char_check(text: str, min_letter_ratio: float = 0.5, max_run: int = 12,
               vowels: tuple[float, float] = (0.15, 0.75), min_unique_ratio: float = 0.08) -> str | None:
    """Why `text` does not look like language at the character level (None when it does)."""
    chars = [c for c in text if not c.isspace()]
    if len(chars) >= 10:
        letters = sum(c.isalpha() for c in chars)
        if letters / len(chars) < min_letter_ratio:
            return f"letter ratio {letters / len(chars):.2f} < {min_letter_ratio}"
    run = best = 0
    for a, b in zip(" " + text, text):
        run = run + 1 if a == b else 1
        best = max(best, run)
    if best > max_run:
        return f"a character repeated {best} times in a row (> {max_run})"
    latin = [c.lower() for c in text if c.isascii() and c.isalpha()]
    n_alpha = sum(c.isalpha() for c in text)
    if len(latin) >= 20 and len(latin) >= 0.5 * n_alpha:
        v = sum(c in "aeiouy" for c in latin) / len(latin)
        if not vowels[0] <= v <= vowels[1]:
            return f"vowel ratio {v:.2f} outside [{vowels[0]}, {vowels[1]}]"
    head = text[:200]
    if len(head) >= 40 and len(set(head)) / len(head) < min_unique_ratio:
        return f"{len(set(head))} distinct characters in {len(head)} (< {min_unique_ratio:.0%})"
    return None
