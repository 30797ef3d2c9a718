"""Surface diversity of a set of questions (compare sets of equal size: every ratio falls as a set grows).

- distinct_questions: distinct question strings / questions
- distinct_1/2/3: distinct word n-grams / all word n-grams over the set (lower-cased words; "distinct-n")
- distinct_openings: distinct first-three-word openings / questions (how many ways a question starts)
- distinct_shapes: distinct questions after masking literals (quoted strings, numbers) / questions: the rule
  realizer's questions differ mostly in their slots, so this stays high for it; openings and n-grams show phrasing.
- mean_words
"""

from __future__ import annotations

import re

_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_LITERAL = re.compile(r"\"[^\"]*\"|'[^']*'|\b\d+(?:[.,]\d+)*\b")


def _ratio(a: int, b: int) -> float:
    return round(a / b, 4) if b else 0.0


def question_diversity(questions: list[str]) -> dict:
    qs = [q.strip() for q in questions if q and q.strip()]
    words = [_WORD.findall(q.lower()) for q in qs]
    out = dict(questions=len(qs), distinct_questions=_ratio(len(set(qs)), len(qs)))
    for n in (1, 2, 3):
        grams = [tuple(w[i : i + n]) for w in words for i in range(len(w) - n + 1)]
        out[f"distinct_{n}"] = _ratio(len(set(grams)), len(grams))
    out["distinct_openings"] = _ratio(len({tuple(w[:3]) for w in words}), len(qs))
    out["distinct_shapes"] = _ratio(len({_LITERAL.sub("V", q.lower()) for q in qs}), len(qs))
    out["mean_words"] = round(sum(map(len, words)) / max(len(words), 1), 2)
    return out
