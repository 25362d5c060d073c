"""Why a label: word attributions by occlusion, with forward passes only (so on ONNX Runtime as on PyTorch).

A text's words are found in the text itself (runs of letters and digits, with inner apostrophes, and each other
symbol on its own: an emoji, a punctuation mark), so that `text[start:end] == word` for every word, whatever the
tokenizer cuts them into. A word's score for a label is the drop in that label's score (the caller's: textfit
uses log-probabilities from the logits, which do not saturate as probabilities do) when the word is taken out of
the text: positive pushes toward the label, negative away from it. Every label's score comes from the same
forward passes. A text of more than `max_words` words is explained in `max_words` contiguous groups of
words (each word gets its group's score), so that a request buys at most `max_words` + 1 texts of inference; a
long text read as windows is read so with each word left out too.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from textfit.errors import DataError

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)
MAX_WORDS = 64
"""Words (or groups of words) left out one at a time, per text: the bound on a text's inference cost."""


@dataclass(frozen=True)
class Word:
    word: str
    start: int
    end: int


def words(text: str) -> list[Word]:
    """The words of `text` with their character offsets into it."""
    return [Word(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]


def _groups(n: int, max_words: int) -> list[range]:
    """Contiguous groups of word indices, at most `max_words` of them."""
    size = max(1, math.ceil(n / max_words))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _without(text: str, found: list[Word], group: range) -> str:
    """The text with a group of words taken out (the space before the first kept, so the rest reads on)."""
    start, end = found[group.start].start, found[group.stop - 1].end
    left = text[:start].rstrip() if end < len(text) and text[end:end + 1].isspace() else text[:start]
    return left + text[end:]


def occlusion(probabilities: Any, texts: Sequence[str], *, max_words: int = MAX_WORDS,
              ) -> list[tuple[list[Word], np.ndarray, np.ndarray]]:
    """For each text: its words, a (words x labels) array of scores and the text's own row, from
    `probabilities(texts)` (a list of texts in, a row of label scores each out)."""
    if max_words < 1:
        raise DataError(f"max_words={max_words}: explain at least one word a text")
    plans = []
    variants: list[str] = []
    for text in texts:
        found = words(text)
        groups = _groups(len(found), max_words)
        plans.append((found, groups, len(variants)))
        variants.append(text)
        variants.extend(_without(text, found, g) for g in groups)
    rows = np.asarray(probabilities(variants), dtype=np.float64)
    out = []
    for found, groups, at in plans:
        full = rows[at]
        scores = np.zeros((len(found), rows.shape[1]))
        for k, group in enumerate(groups):
            scores[group.start:group.stop] = full - rows[at + 1 + k]
        out.append((found, scores, full))
    return out


def as_records(found: list[Word], scores: np.ndarray, column: int) -> list[dict[str, Any]]:
    """The explanation of one label: a list of {word, start, end, score}, in the text's order."""
    return [{"word": w.word, "start": w.start, "end": w.end, "score": float(s)}
            for w, s in zip(found, scores[:, column])]
