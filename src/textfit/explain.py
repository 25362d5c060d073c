"""Why a label: word attributions, by gradient (the default with PyTorch's weights), Integrated Gradients or
occlusion (the default on ONNX Runtime).

A text's words are found in the text itself (runs of letters and digits, with inner apostrophes, and each other
symbol on its own: an emoji, a punctuation mark), so that `text[start:end] == word` for every word, whatever the
tokenizer cuts them into. Only the words the model reads are explained: those within its first max_seq_length
tokens (or, read as windows, within its windows); a longer text's later words are not listed.

Every method attributes the same quantity, the label's log-probability (a multi-label model's log-odds), taken
from the logits because probabilities saturate at 1.0 and a word's part in a confident answer would read as
nothing. Positive pushes toward the label, negative away from it.

- integrated_gradients (Sundararajan et al., 2017, as Captum computes it): the path integral of the gradient
  from a baseline (every token but the special ones replaced by padding, see baseline_token) to the text, on the
  token embeddings, summed over each token's vector and over the tokens of each word. Needs PyTorch's weights.
- gradient: the same with one point, the path's midpoint: the gradient there times the text's embeddings less
  the baseline's. One forward and one backward pass. In bench/explain_bench.py it was the most faithful of
  the four methods compared over both sets (ERASER's comprehensiveness: far ahead on BBC News, a little behind
  SHAP on Debian's short descriptions), above the full integral (whose quadrature on a fine-tuned model's steep
  regions lands anywhere), at under 10x a prediction's cost for a 30-word text: the default wherever the
  PyTorch weights are loaded.
- occlusion: a word's score is the drop in the label's score when the word is taken out of the text. Forward
  passes only, so it runs on ONNX Runtime as on PyTorch, through the same batching (and the server's queue) as
  predictions; every label's scores come from the same passes. A text of more than `max_words` words is
  explained in `max_words` contiguous groups of words (each word gets its group's score), so a text costs at
  most `max_words` + 1 texts of inference.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from textfit.errors import DataError, TextfitError

if TYPE_CHECKING:
    from torch import nn

WORD = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)
MAX_WORDS = 64
"""Words (or groups of words) left out one at a time, per text: the bound on a text's inference cost."""
METHODS = ("gradient", "integrated_gradients", "occlusion")
IG_STEPS = 32
"""Integrated Gradients' steps along the path (Gauss-Legendre points): the attributions' sum is within a few
hundredths of the score's change from the baseline on the models tested, at a third of Captum's default cost."""


@dataclass(frozen=True)
class Word:
    word: str
    start: int
    end: int


Reach = tuple[tuple[int, int], ...] | None
"""The character ranges of a text the model reads, in order ([start, end) each: a truncated text's one, a head
and tail's two); None: all of it, as far as anyone can tell (a tokenizer without offsets)."""


def words(text: str, reach: Reach = None) -> list[Word]:
    """The words of `text` with their character offsets into it (those starting within `reach`)."""
    found = [Word(m.group(), m.start(), m.end()) for m in WORD.finditer(text)]
    return found if reach is None else [w for w in found if any(a <= w.start < b for a, b in reach)]


def check_method(method: str) -> str:
    if method not in METHODS:
        raise DataError(f"explain method {method!r} is not known; use {', '.join(METHODS)}")
    return method


def check_max_words(max_words: int) -> int:
    if isinstance(max_words, bool) or not isinstance(max_words, int) or max_words < 1:
        raise DataError(f"max_words={max_words!r}: explain at least one word a text (a whole number, 1 or more)")
    return max_words


def _groups(n: int, max_words: int) -> list[range]:
    """Contiguous groups of word indices, at most `max_words` of them."""
    size = max(1, math.ceil(n / max_words))
    return [range(i, min(n, i + size)) for i in range(0, n, size)]


def _without(text: str, found: list[Word], group: range) -> str:
    """The text with a group of words taken out (the space before the first kept, so the rest reads on)."""
    start, end = found[group.start].start, found[group.stop - 1].end
    left = text[:start].rstrip() if end < len(text) and text[end:end + 1].isspace() else text[:start]
    return left + text[end:]


@dataclass(frozen=True)
class Occlusion:
    """One text's occlusion: its words, their groups, and where its rows start among the variants."""

    words: list[Word]
    groups: list[range]
    at: int

    def scores(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(words x labels) attributions and the text's own row, from the variants' rows of label scores."""
        full = rows[self.at]
        scores = np.zeros((len(self.words), rows.shape[1]))
        for k, group in enumerate(self.groups):
            scores[group.start:group.stop] = full - rows[self.at + 1 + k]
        return scores, full


def occlusion_plan(texts: Sequence[str], extents: Sequence[Reach], max_words: int = MAX_WORDS
                   ) -> list[Occlusion]:
    """Each text's plan: its words and their groups, and where its rows start among `variants`'."""
    check_max_words(max_words)
    plans, at = [], 0
    for text, extent in zip(texts, extents):
        found = words(text, extent)
        groups = _groups(len(found), max_words)
        plans.append(Occlusion(found, groups, at))
        at += 1 + len(groups)
    return plans


def variants(texts: Sequence[str], plans: Sequence[Occlusion]) -> list[str]:
    """The texts to score: each text, then each text with one group of words left out."""
    out: list[str] = []
    for text, plan in zip(texts, plans):
        out.append(text)
        out.extend(_without(text, plan.words, g) for g in plan.groups)
    return out


def cost(texts: Sequence[str], plans: Sequence[Occlusion]) -> int:
    """The characters of the variants of `texts`: what an occlusion holds in memory and reads."""
    return sum(len(text) * (1 + len(plan.groups)) for text, plan in zip(texts, plans))


def occlusion(score: Callable[[list[str]], np.ndarray], texts: Sequence[str], extents: Sequence[Reach],
              *, max_words: int = MAX_WORDS) -> list[tuple[list[Word], np.ndarray, np.ndarray]]:
    """For each text: its words, a (words x labels) array of scores and the text's own row of label scores, from
    `score(texts)` (a list of texts in, a row of label scores each out)."""
    plans = occlusion_plan(texts, extents, max_words)
    rows = np.asarray(score(variants(texts, plans)), dtype=np.float64)
    return [(plan.words, *plan.scores(rows)) for plan in plans]


@dataclass(frozen=True)
class Window:
    """The tokens of a text (or of one window of it) as the model reads them, with their character spans."""

    ids: list[int]
    offsets: list[tuple[int, int]]
    special: list[bool]


def integrated_gradients(model: nn.Module, windows: Sequence[Window], words_: list[Word], weights: np.ndarray,
                         columns: Sequence[int], log_score: Callable[[Any], Any], *, pad_id: int,
                         token_types: bool, steps: int = IG_STEPS) -> np.ndarray:
    """A (words x len(columns)) array: each word's Integrated Gradients attribution to each label's score, the
    windows' attributions weighted by `weights` (windows x labels: the share of the text's score each window's
    score carries, the chain rule through the average of windows)."""
    try:
        import torch
        from captum.attr import LayerIntegratedGradients
    except ImportError:
        raise TextfitError("explaining by gradients needs Captum, a dependency of textfit: pip install captum (or "
                           "use the occlusion method)") from None

    def forward(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        inputs = {"input_ids": ids, "attention_mask": mask}
        if token_types:
            inputs["token_type_ids"] = torch.zeros_like(ids)
        return log_score(model(**inputs).logits)

    explainer = LayerIntegratedGradients(forward, _embeddings(model))
    out = np.zeros((len(words_), len(columns)))
    starts = np.array([w.start for w in words_])
    for k, window in enumerate(windows):
        ids = torch.tensor([window.ids])
        mask = torch.ones_like(ids)
        baseline = torch.tensor([[t if s else pad_id for t, s in zip(window.ids, window.special)]])
        owner = _token_words(window, starts, words_)
        for j, column in enumerate(columns):
            if weights[k, j] == 0:
                continue
            with torch.enable_grad():
                attributions = explainer.attribute(ids, baselines=baseline, additional_forward_args=(mask,),
                                                   target=column, n_steps=steps)
            per_token = attributions.sum(dim=-1)[0].detach().double().numpy()
            for token, word in enumerate(owner):
                if word >= 0:
                    out[word, j] += weights[k, j] * per_token[token]
    return out


def _embeddings(model: nn.Module) -> Any:
    """The token-embedding layer: every transformers model has get_input_embeddings (MeanPooled passes it on)."""
    return cast(Any, model).get_input_embeddings()


def baseline_token(model: nn.Module, tokenizer: Any) -> int:
    """The token that stands for "no word" at Integrated Gradients' baseline: padding, unless its embedding is
    the zero vector (an Embedding's padding row), which a family that normalises the token embeddings with no
    position embedding added (DeBERTa-v2/v3) sends to LayerNorm's singular point, where gradients are unbounded
    and the integral is meaningless: then the mask token (or the unknown one)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    weight = _embeddings(model).weight
    if pad < len(weight) and bool(weight[pad].abs().sum() > 0):
        return int(pad)
    for other in (tokenizer.mask_token_id, tokenizer.unk_token_id):
        if other is not None and other < len(weight):
            return int(other)
    return int(pad)


def _token_words(window: Window, starts: np.ndarray, words_: list[Word]) -> list[int]:
    """The word each token is part of (-1 for special tokens and tokens in no word, such as spaces)."""
    owner = []
    for (start, end), special in zip(window.offsets, window.special):
        if special or end <= start:
            owner.append(-1)
            continue
        i = int(np.searchsorted(starts, end - 1, side="right")) - 1  # the last word the token overlaps
        owner.append(i if i >= 0 and words_[i].end > start else -1)
    return owner


def as_records(found: list[Word], scores: np.ndarray, column: int) -> list[dict[str, Any]]:
    """The explanation of one label: a list of {word, start, end, score}, in the text's order."""
    return [{"word": w.word, "start": w.start, "end": w.end, "score": float(s)}
            for w, s in zip(found, scores[:, column])]
